"""lokal quantize with llama.cpp's quantizer on the real smollm2:135m (stored as Q4_1, so every
quantization here is a requantization): the new models load and answer, carry the source's
template and parameters, and every refusal or failure leaves the store as it was."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lokal.store.model_store import ModelStore
from lokal.store.progress import PullProgress
from lokal.workshop.quantize import QuantizeError, quantize_model

pytestmark = pytest.mark.slow

SOURCE = "smollm2:135m"


@pytest.fixture(scope="module")
def home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of its own holding smollm2:135m (the shared test home is never written to), with a
    template and a parameter of its own so that carrying them over is seen."""
    home = tmp_path_factory.mktemp("quantize-home")
    store = ModelStore(home)
    src = ModelStore(model_home).get(SOURCE)
    store.import_file(ModelStore(model_home).blob_path(src.digest), SOURCE)
    custom = store.get(SOURCE).model_copy(update={
        "template": src.facts.chat_template, "parameters": {"temperature": 0.25, "stop": ["<|im_end|>"]},
        "system": "You are terse.",
    })
    store.write_manifest(custom)
    return home


def _listing(home: Path) -> list[str]:
    """Every file under the store (manifests, blobs, tmp), as relative paths."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and not p.name.endswith(".log"))


def _lokal(home: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOKAL_HOME": str(home), "LOKAL_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lokal.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)  # type: ignore[call-overload]


def test_requantizing_is_refused_without_the_flag_and_writes_nothing(home: Path) -> None:
    before = _listing(home)
    with pytest.raises(QuantizeError, match=r"already quantized \(Q4_1\).*--allow-requantize"):
        quantize_model(ModelStore(home), SOURCE, "Q8_0", threads=1)
    result = _lokal(home, "quantize", SOURCE, "--to", "Q8_0")
    assert result.returncode == 1
    assert "already quantized (Q4_1)" in result.stderr and "Traceback" not in result.stderr
    assert _listing(home) == before


def test_an_unknown_type_is_one_line_naming_the_valid_ones(home: Path) -> None:
    before = _listing(home)
    result = _lokal(home, "quantize", SOURCE, "--to", "Q7_K")
    assert result.returncode == 1
    assert 'unknown quantization type "Q7_K"; choose one of F32, F16' in result.stderr
    assert "Traceback" not in result.stderr
    assert _listing(home) == before


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_a_quantized_model_is_stored_with_the_source_settings_and_answers(home: Path, qtype: str) -> None:
    store = ModelStore(home)
    seen: list[PullProgress] = []
    warnings: list[str] = []
    manifest = quantize_model(store, SOURCE, qtype, allow_requantize=True, threads=1, progress=seen.append,
                              warn=warnings.append)
    src = store.get(SOURCE)
    assert manifest.name == f"{SOURCE}-{qtype.lower()}"
    assert manifest.facts.quantization == qtype
    assert manifest.digest != src.digest
    assert (manifest.template, manifest.parameters, manifest.system, manifest.kind) == (
        src.template, src.parameters, src.system, src.kind)
    assert manifest.source == f"quantize:{qtype} {SOURCE}@{src.digest}"
    assert store.get(manifest.name) == manifest
    assert list(store.tmp_dir.iterdir()) == []  # the partial file became the blob
    assert warnings and "Q4_1" in warnings[0]
    counts = [p.completed for p in seen if p.total]
    assert counts[-1] == src.facts.tensor_count == manifest.facts.tensor_count  # one report per tensor, in order
    assert counts == sorted(counts)
    # Q8_0 holds more bits than the Q4_1 source, Q4_K_M about as many: the file sizes say so
    assert (manifest.size > src.size * 1.3) if qtype == "Q8_0" else (0.8 * src.size < manifest.size < 1.3 * src.size)

    answer = _lokal(home, "run", manifest.name, "What is the capital of France? One word.", "--temperature", "0",
                    "--max-tokens", "12", "--ctx-size", "512")
    assert answer.returncode == 0, answer.stderr
    assert "paris" in answer.stdout.lower()


def test_quantizing_again_reuses_the_stored_model(home: Path) -> None:
    store = ModelStore(home)
    first = quantize_model(store, SOURCE, "Q8_0", allow_requantize=True, threads=1)
    seen: list[PullProgress] = []
    again = quantize_model(store, SOURCE, "q8_0", allow_requantize=True, threads=1, progress=seen.append)
    assert again == first
    assert [p.status for p in seen] == ["success"]  # no quantizer run


def test_the_cli_shows_a_progress_bar_over_the_tensors_and_the_requantize_warning(home: Path) -> None:
    result = _lokal(home, "quantize", SOURCE, "--to", "Q5_K_M", "--allow-requantize", "--name", "small:q5")
    assert result.returncode == 0, result.stderr
    assert "warning: requantizing smollm2:135m from Q4_1" in result.stderr
    assert "272/272 tensors" in result.stderr
    assert "small:q5" in result.stdout
    assert ModelStore(home).get("small:q5").facts.quantization == "Q5_K_M"


def _limit_file_size() -> None:  # in the child: files stop growing at 8 MB, and writing past it fails (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))


def test_a_quantizer_that_cannot_write_its_file_leaves_the_store_unchanged(home: Path) -> None:
    before = _listing(home)
    result = _lokal(home, "quantize", SOURCE, "--to", "Q6_K", "--allow-requantize", preexec_fn=_limit_file_size)
    assert result.returncode == 1
    assert "error: llama.cpp could not quantize" in result.stderr and "Traceback" not in result.stderr
    assert _listing(home) == before  # no blob, no manifest, no partial file in tmp/
    assert not ModelStore(home).exists(f"{SOURCE}-q6_k")


def test_a_model_that_is_not_a_language_model_is_refused(home: Path, model_home: Path) -> None:
    speech = next((m for m in ModelStore(model_home).list() if m.format == "tar"), None)
    if speech is None:
        pytest.skip("no folder model (whisper, piper) in the test home")
    with pytest.raises(QuantizeError, match="only language and embedding GGUF models"):
        quantize_model(ModelStore(model_home), speech.name, "Q8_0", allow_requantize=True)  # refused before any write
    assert not ModelStore(model_home).exists(f"{speech.name}-q8_0")


def test_a_killed_quantize_takes_its_quantizer_with_it_and_leaves_the_store_unchanged(home: Path) -> None:
    before = _listing(home)
    env = {**os.environ, "LOKAL_HOME": str(home), "LOKAL_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lokal.cli.main", "quantize", SOURCE, "--to", "Q8_0",
                             "--allow-requantize", "--name", "killed:q8"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = home / "tmp"
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and proc.poll() is None:  # kill it once llama.cpp is writing
        partial = next((p for p in tmp.glob("blob-*.partial") if p.exists() and p.stat().st_size > 1 << 20), None)
        if partial is not None:
            break
        time.sleep(0.005)
    assert partial is not None, "the quantizer never wrote"
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    writers = [p for p in psutil.process_iter(["cmdline"]) if str(partial) in " ".join(p.info["cmdline"] or [])]
    assert writers == []  # the quantizer died with lokal
    ModelStore(home)  # opening the store removes what a killed process left in tmp/
    assert _listing(home) == before
    assert not ModelStore(home).exists("killed:q8")
