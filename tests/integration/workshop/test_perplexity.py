"""lokal eval's perplexity on the real smollm2:135m: the same number as llama.cpp's own
llama-perplexity on the same text and context (where that tool is built here), finite and far below
the vocabulary on English, much higher on the same words shuffled; bad input is one clear error."""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lokal.store.model_store import ModelStore
from lokal.workshop.perplexity import EVAL_TEXT, PerplexityError, builtin_text, perplexity

pytestmark = pytest.mark.slow

CTX = 128  # small chunks keep these tests quick; the method is the same at 512


def _llama_perplexity() -> str | None:
    """llama.cpp's llama-perplexity: $LLAMA_PERPLEXITY, on PATH, or built beside a peer's llama-server here."""
    found = os.environ.get("LLAMA_PERPLEXITY") or shutil.which("llama-perplexity")
    return found or next(iter(sorted(glob.glob("/work/peers/*/llama.cpp/build/bin/llama-perplexity"))), None)


@pytest.fixture(scope="module")
def gguf(model_home: Path) -> Path:
    return ModelStore(model_home).gguf_path("smollm2:135m")


def test_perplexity_is_llama_perplexity_s_number(gguf: Path, tmp_path: Path) -> None:
    tool = _llama_perplexity()
    if tool is None:
        pytest.skip("llama.cpp's llama-perplexity is not built here (set LLAMA_PERPLEXITY)")
    text = tmp_path / "text.txt"
    text.write_text(builtin_text(), encoding="utf-8")
    run = subprocess.run([tool, "-m", str(gguf), "-f", str(text), "-c", str(CTX), "-b", str(4 * CTX),
                          "--chunks", "8", "-t", "1"], capture_output=True, text=True, timeout=600)
    match = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", run.stdout + run.stderr)
    assert match, (run.stdout + run.stderr)[-2000:]
    theirs, their_error = float(match.group(1)), float(match.group(2))
    ours = perplexity(gguf, ctx=CTX, batch=4 * CTX, threads=1, max_chunks=8)
    assert ours.chunks == 8 and ours.tokens == 8 * (CTX - 1 - CTX // 2)
    assert ours.ppl == pytest.approx(theirs, rel=0.01)
    assert ours.stderr == pytest.approx(their_error, rel=0.05)


def test_english_is_finite_and_far_below_the_vocabulary_and_shuffled_words_are_much_worse(gguf: Path) -> None:
    english = perplexity(gguf, ctx=CTX, batch=4 * CTX, threads=1, max_chunks=8)
    assert 2.0 < english.ppl < 200.0  # smollm2 has 49,152 tokens: a guess would be near that
    assert 0 < english.stderr < english.ppl / 5
    assert english.text == EVAL_TEXT
    words = builtin_text().split()
    random.Random(0).shuffle(words)
    shuffled = perplexity(gguf, " ".join(words), ctx=CTX, batch=4 * CTX, threads=1, max_chunks=8)
    assert shuffled.ppl > 5 * english.ppl


def test_one_sequence_per_decode_gives_the_batched_number(gguf: Path) -> None:
    batched = perplexity(gguf, ctx=CTX, batch=4 * CTX, threads=1, max_chunks=4)
    alone = perplexity(gguf, ctx=CTX, batch=CTX, threads=1, max_chunks=4)
    assert alone.ppl == pytest.approx(batched.ppl, rel=1e-3)


def test_a_text_shorter_than_two_chunks_is_refused(gguf: Path) -> None:
    with pytest.raises(PerplexityError, match=r"the text has \d+ tokens; perplexity with a context of 128 needs at "
                                              r"least 256"):
        perplexity(gguf, "Too short to measure.", ctx=CTX, threads=1)


def test_lokal_eval_prints_ppl_and_its_error_and_json(model_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "LOKAL_HOME": str(model_home), "LOKAL_THREADS": "1"}
    cmd = [sys.executable, "-m", "lokal.cli.main", "eval", "smollm2:135m", "--ctx", str(CTX), "--chunks", "4"]
    shown = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"smollm2:135m: PPL = [\d.]+ \+/- [\d.]+", shown.stdout)
    as_json = json.loads(subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True,
                                        timeout=300).stdout)
    assert as_json["model"] == "smollm2:135m" and as_json["chunks"] == 4 and as_json["ctx"] == CTX
    short = tmp_path / "short.txt"
    short.write_text("Not enough words.", encoding="utf-8")
    refused = subprocess.run([*cmd, "--file", str(short)], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert "error: the text has" in refused.stderr and "Traceback" not in refused.stderr


def test_the_shipped_text_states_its_source_and_licence() -> None:
    readme = (Path(__file__).resolve().parents[3] / "src/lokal/workshop/texts/README.md").read_text()
    assert EVAL_TEXT in readme and "public domain" in readme.lower()
    assert len(builtin_text()) > 30_000


def test_lokal_eval_refuses_a_model_that_does_not_generate(model_home: Path) -> None:
    if not ModelStore(model_home).exists("all-minilm:l6-v2"):
        pytest.skip("all-minilm:l6-v2 is not in the test home")
    env = {**os.environ, "LOKAL_HOME": str(model_home)}
    refused = subprocess.run([sys.executable, "-m", "lokal.cli.main", "eval", "all-minilm:l6-v2"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "all-minilm:l6-v2 is of kind embedding: perplexity needs a model that generates text" in refused.stderr
