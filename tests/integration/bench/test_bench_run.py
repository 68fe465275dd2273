"""`lokal bench run` end to end: a live lokal (OpenAI and Ollama APIs), llama-cpp-python's own server started by
the bench with the same model, and a dead URL; then the JSON, the HTML report, `compare` and Ctrl-C."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from PIL import Image

from tests.integration.conftest import LiveServer, free_port

pytestmark = pytest.mark.slow

MAX_TOKENS = 8


def bench(home: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOKAL_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lokal.cli.main", "bench", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(server: LiveServer, model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    dead = f"http://127.0.0.1:{free_port()}"
    proc = bench(
        model_home, "run", "--target", f"lokal={server.url}@smollm2:135m", "--target", "llama-cpp-python",
        "--target", f"bad={dead}@smollm2:135m", "--target", f"ollama={server.url}@smollm2:135m",
        "--concurrency", "1,2", "--rounds", "1", "--max-tokens", str(MAX_TOKENS), "--threads", "1", "--ctx", "1024",
        "--baseline", "lokal", "--json", str(out / "a.json"), "--html", str(out / "a.html"), "--logs", str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"dir": out, "stdout": proc.stdout, "stderr": proc.stderr, "dead": dead,
            "doc": json.loads((out / "a.json").read_text())}


def target(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["targets"] if t["name"] == name)


def test_json_matches_the_schema(run: dict[str, Any]) -> None:
    schema = json.loads(resources.files("lokal.bench").joinpath("schema.json").read_text())
    jsonschema.validate(run["doc"], schema)
    assert run["doc"]["config"]["concurrency"] == [1, 2] and run["doc"]["baseline"] == "lokal"


@pytest.mark.parametrize("name", ["lokal", "llama-cpp-python", "ollama"])
def test_every_metric_is_present_and_plausible(run: dict[str, Any], name: str) -> None:
    t = target(run["doc"], name)
    assert t["status"] == "ok" and t["errors"] == 0, t
    assert [lv["concurrency"] for lv in t["levels"]] == [1, 2]
    for lv in t["levels"]:
        assert lv["requests"] == (3 if lv["concurrency"] == 1 else 2) and lv["errors"] == 0
        assert lv["tok_s"] > 0 and lv["req_s"] > 0 and lv["stream_tok_s"] > 0
        assert 0 < lv["tokens_per_req"] <= MAX_TOKENS
        for dist in (lv["ttft_ms"], lv["latency_s"], lv["itl_ms"]):
            assert 0 < dist["min"] <= dist["p50"] <= dist["p95"] <= dist["p99"] <= dist["max"]
        assert lv["ttft_ms"]["max"] / 1000 <= lv["latency_s"]["max"]
        assert len(lv["ttft_samples_ms"]) == lv["requests"]
    assert t["single_stream_tok_s"] > 0 and t["peak_tok_s"] > 0 and t["ttft_p50_ms"] > 0
    assert t["peak_rss_mib"] > 50  # a process tree holding a 100 MB model


@pytest.mark.parametrize("name", ["lokal", "ollama"])
def test_token_counts_match_the_servers_usage(run: dict[str, Any], name: str) -> None:
    for lv in target(run["doc"], name)["levels"]:
        assert lv["usage_reported"] == lv["requests"]
        assert lv["tokens"] == lv["usage_tokens"]
    if name == "lokal":  # ignore_eos: exactly max_tokens each
        assert all(lv["tokens_per_req"] == MAX_TOKENS for lv in target(run["doc"], name)["levels"])
        assert target(run["doc"], name)["levels"][0]["prompt_tok_s"] > 0


def test_llama_cpp_python_chunks_match_its_own_usage(run: dict[str, Any], model_home: Path) -> None:
    """Its stream carries no usage: the bench counts chunks; a non-streamed twin request reports the same count."""
    from lokal.bench.scenarios import builtin_prompts
    from lokal.bench.targets import llama_cpp_python
    from lokal.store.model_store import ModelStore

    t = target(run["doc"], "llama-cpp-python")
    assert all(lv["usage_reported"] == 0 for lv in t["levels"])
    prompt = builtin_prompts(1, 1)[0]  # the first prompt of level c=1 (seed 0 + concurrency 1)
    with llama_cpp_python(ModelStore(model_home).gguf_path("smollm2:135m"), 1, 1024) as srv:
        body = {"model": "bench", "messages": prompt.messages, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 0}
        usage = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()["usage"]
        chunks = 0
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    chunks += bool(delta.get("content"))
    assert chunks == usage["completion_tokens"]
    assert t["levels"][0]["tokens_per_req"] <= MAX_TOKENS


def test_a_dead_url_is_reported_counted_and_the_rest_completes(run: dict[str, Any]) -> None:
    bad = target(run["doc"], "bad")
    assert bad["status"] == "failed" and bad["errors"] >= 1 and bad["levels"] == []
    assert run["dead"] in bad["error"] and "Connect" in bad["error"]
    lines = [ln for ln in run["stderr"].splitlines() + run["stdout"].splitlines() if run["dead"] in ln]
    assert lines and all("bad:" in ln for ln in lines)
    assert any(f.startswith("bad: ") for f in run["doc"]["failures"])
    summary = run["stdout"].split("throughput and latency")[0]
    bad_row = next(ln for ln in summary.splitlines() if "bad" in ln)
    assert "failed" in bad_row and " 1 " in bad_row


def test_terminal_tables_show_every_system_with_ratios(run: dict[str, Any]) -> None:
    out = run["stdout"]
    assert "vs lokal" in out and "1.00×" in out
    for name in ("lokal", "llama-cpp-python", "ollama"):
        assert sum(ln.lstrip("│ ").startswith(name) for ln in out.splitlines()) >= 3  # summary + c=1 + c=2


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")
        self.tables += tag == "table"


def test_html_report_is_self_contained_with_decodable_charts(run: dict[str, Any]) -> None:
    text = (run["dir"] / "a.html").read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    parser = _Images()
    parser.feed(text)
    assert parser.tables == 2 and len(parser.srcs) == 3
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.verify()
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    assert "http" not in text.replace(run["doc"]["targets"][0]["url"], "").split("<body>")[0]  # no external assets


def test_compare_shows_both_runs_and_the_change(run: dict[str, Any], model_home: Path) -> None:
    a = run["dir"] / "a.json"
    b_doc = copy.deepcopy(run["doc"])
    lv = target(b_doc, "lokal")["levels"][1]
    lv["tok_s"] *= 1.25
    b = run["dir"] / "b.json"
    b.write_text(json.dumps(b_doc))
    proc = bench(model_home, "compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.lstrip("│ ").startswith("lokal") and "│ 2 " in ln)
    base = target(run["doc"], "lokal")["levels"][1]["tok_s"]
    assert f"{base:.1f}" in row and f"{base * 1.25:.1f}" in row and "+25.0%" in row
    assert sum("ollama" in ln for ln in proc.stdout.splitlines()) == 2
    bad = bench(model_home, "compare", str(a), str(run["dir"] / "a.html"))
    assert bad.returncode == 1 and "error" in bad.stderr


def test_ctrl_c_stops_cleanly_and_keeps_what_finished(server: LiveServer, model_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "i.json"
    env = {**os.environ, "LOKAL_HOME": str(model_home), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lokal.cli.main", "bench", "run", "--target", f"lokal={server.url}@smollm2:135m",
         "--concurrency", "1,8", "--rounds", "3", "--max-tokens", "32", "--json", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 90
    for line in proc.stderr:  # the c=1 level is done: interrupt c=8 (24 requests of 32 tokens)
        if "lokal c=1:" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
    assert [lv["concurrency"] for lv in doc["targets"][0]["levels"]] == [1]
    assert "interrupted" in stdout + stderr and "Traceback" not in stderr
