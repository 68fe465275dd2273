"""Target specs, scenario presets, prompt sets and stream parsing of the bench."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lokal.bench.loadgen import RequestOptions, stream_request
from lokal.bench.scenarios import Prompt, builtin_prompts, load_jsonl, make_scenario
from lokal.bench.targets import LocalOptions, Target, TargetSpecError, parse_target

LOCAL = LocalOptions(model="smollm2:135m", home=Path("/tmp/h"), threads=2, slots=4, ctx=1024,
                     gguf=Path("/tmp/m.gguf"))


def test_url_targets_pick_the_api_and_model() -> None:
    t = parse_target("vllm=http://10.0.0.2:8000/v1@qwen", LOCAL)
    assert (t.name, t.url, t.model, t.api, t.server) == ("vllm", "http://10.0.0.2:8000", "qwen", "openai", None)
    o = parse_target("ollama=http://127.0.0.1:11434@llama3", LOCAL)
    assert (o.url, o.model, o.api) == ("http://127.0.0.1:11434", "llama3", "ollama")
    x = parse_target("mine=ollama+http://127.0.0.1:11434/api@llama3", LOCAL)
    assert (x.url, x.api) == ("http://127.0.0.1:11434", "ollama")
    d = parse_target("peer=http://127.0.0.1:8080", LOCAL)
    assert (d.url, d.model) == ("http://127.0.0.1:8080", "smollm2:135m")


def test_local_targets_carry_a_server_to_start() -> None:
    t = parse_target("lokal:gemma3:270m", LOCAL)
    assert t.kind == "lokal" and t.model == "gemma3:270m" and t.server is not None
    assert "--parallel" in t.server.argv and "4" in t.server.argv
    s = parse_target("llama-server:/opt/llama-server", LOCAL)
    assert s.server is not None and s.server.argv[0] == "/opt/llama-server" and "/tmp/m.gguf" in s.server.argv
    assert parse_target("llama-cpp-python", LOCAL).kind == "llama-cpp-python"
    with pytest.raises(TargetSpecError):
        parse_target("vllm", LOCAL)


def test_scenarios_have_their_presets_and_take_overrides() -> None:
    assert make_scenario("sweep").concurrency == [1, 10, 100]
    assert make_scenario("sweep", [1, 2], 1).concurrency == [1, 2]
    assert make_scenario("sweep", [1, 2], 1).rounds_at(1) == 3
    assert make_scenario("long-prompt").prompt_tokens == 1500
    assert make_scenario("shared-prefix", prefix_tokens=300).shared_prefix_tokens == 300
    with pytest.raises(ValueError, match="unknown scenario"):
        make_scenario("nope")


def test_builtin_prompts_repeat_for_a_seed_and_control_length() -> None:
    assert builtin_prompts(8, seed=3) == builtin_prompts(8, seed=3)
    assert builtin_prompts(8, seed=3) != builtin_prompts(8, seed=4)
    short = builtin_prompts(1, 0)[0].messages[0]["content"]
    long = builtin_prompts(1, 0, prompt_tokens=1000)[0].messages[0]["content"]
    assert len(short.split()) < 20 and 700 <= len(long.split()) <= 800
    # each repeated measurement reads new prompts, worded apart from the first words on
    again = builtin_prompts(8, seed=3, round_no=1)
    assert all(a.messages[0]["content"].split()[1] != b.messages[0]["content"].split()[1]
               for a, b in zip(builtin_prompts(8, seed=3), again, strict=True))
    shared = builtin_prompts(3, 0, system="be brief")
    assert all(p.messages[0] == {"role": "system", "content": "be brief"} for p in shared)


def test_jsonl_prompts_in_sharegpt_openai_and_plain_shapes(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
        {"prompt": "plain"},
    ]) + "\n\n")
    got = [p.messages for p in load_jsonl(f)]
    assert got == [[{"role": "user", "content": "hi"}],
                   [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                   [{"role": "user", "content": "plain"}]]
    f.write_text("{bad\n")
    with pytest.raises(ValueError, match=":1: not JSON"):
        load_jsonl(f)


def _client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler)


async def test_openai_stream_is_parsed_with_usage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] and body["ignore_eos"] and body["max_tokens"] == 3
        chunks = [{"choices": [{"delta": {"content": w}}]} for w in ("a", "b", "c")]
        chunks.append({"choices": [], "usage": {"completion_tokens": 3, "prompt_tokens": 7}})
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text)

    async with _client(httpx.MockTransport(handler)) as client:
        rec = await stream_request(client, Target("x", "http://h", "m"), Prompt([{"role": "user", "content": "q"}]),
                                   RequestOptions(max_tokens=3))
    assert rec.ok and rec.tokens == 3 and rec.chunks == 3 and rec.usage_tokens == 3 and rec.prompt_tokens == 7
    assert rec.ttft is not None and len(rec.itl) == 2 and rec.latency >= rec.ttft


async def test_ollama_stream_counts_eval_count() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/chat"
        assert json.loads(request.content)["options"]["num_predict"] == 2
        lines = [{"message": {"content": "x"}, "done": False}, {"message": {"content": "y"}, "done": False},
                 {"message": {"content": ""}, "done": True, "eval_count": 2, "prompt_eval_count": 9}]
        return httpx.Response(200, text="\n".join(json.dumps(x) for x in lines) + "\n")

    async with _client(httpx.MockTransport(handler)) as client:
        rec = await stream_request(client, Target("o", "http://h", "m", api="ollama"), Prompt([]),
                                   RequestOptions(max_tokens=2))
    assert rec.ok and rec.tokens == 2 and rec.usage_tokens == 2 and rec.prompt_tokens == 9


async def test_http_and_network_errors_become_records() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused")
        return httpx.Response(404, json={"error": "model not found"})

    async with _client(httpx.MockTransport(handler)) as client:
        nf = await stream_request(client, Target("a", "http://up", "m"), Prompt([]), RequestOptions(4))
        down = await stream_request(client, Target("b", "http://down", "m"), Prompt([]), RequestOptions(4))
    assert nf.error is not None and nf.error.startswith("HTTP 404") and "model not found" in nf.error
    assert down.error == "ConnectError: refused" and down.tokens == 0


def test_error_bodies_are_reduced_to_their_message() -> None:
    from lokal.bench.loadgen import error_message

    assert error_message(b'{"error": {"message": "The model `x` does not exist.", "code": "model_not_found"}}') == \
        "The model `x` does not exist."
    assert error_message(b'{"error": "model \\"x\\" not found, try pulling it first"}') == \
        'model "x" not found, try pulling it first'
    assert error_message(b"<html>\n Bad Gateway </html>") == "<html> Bad Gateway </html>"


def test_a_server_that_cannot_start_is_one_failure_line_and_the_run_goes_on() -> None:
    import socket
    import sys

    from lokal.bench.run import BenchEvents, RunConfig, run_bench
    from lokal.bench.targets import LocalServer, free_port

    lines: list[str] = []

    class Collect(BenchEvents):
        def failure(self, line: str) -> None:
            lines.append(line)

    crash = LocalServer("crash", [sys.executable, "-c", "raise SystemExit(3)"], free_port(), "m")
    with socket.socket() as busy:  # a port someone else holds is refused, not measured
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = LocalServer("taken", [sys.executable, "-c", "pass"], busy.getsockname()[1], "m")
        targets = [Target("crash", crash.url, "m", server=crash), Target("taken", taken.url, "m", server=taken)]
        doc = run_bench(targets, RunConfig(make_scenario("single", [1], 1)), Collect())
    rows = {t["name"]: t for t in doc["targets"]}
    assert rows["crash"]["status"] == "failed" and "exited with 3" in rows["crash"]["error"]
    assert rows["taken"]["status"] == "failed" and "already in use" in rows["taken"]["error"]
    assert all(r["errors"] == 1 for r in rows.values())
    assert len(lines) == 2 and lines[0].startswith("crash: did not start")
