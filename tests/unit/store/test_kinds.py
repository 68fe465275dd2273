"""Model kinds: derived from a GGUF's metadata, and read from manifests written before kinds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lokal.store.gguf_facts import GgufFacts, read_gguf_facts
from lokal.store.kinds import kind_from_facts
from lokal.store.manifest import Manifest


def _facts(arch: str, **metadata: object) -> GgufFacts:
    return GgufFacts(architecture=arch, metadata={"general.architecture": arch, **metadata})


def test_generative_models_are_chat_and_pooled_ones_embed() -> None:
    assert kind_from_facts(_facts("llama")) == "chat"
    assert kind_from_facts(_facts("qwen3", **{"qwen3.pooling_type": 0})) == "chat"  # NONE
    assert kind_from_facts(_facts("bert", **{"bert.pooling_type": 1})) == "embedding"  # MEAN
    assert kind_from_facts(_facts("qwen3", **{"qwen3.pooling_type": 3})) == "embedding"  # LAST: Qwen3-Embedding
    assert kind_from_facts(_facts("nomic-bert")) == "embedding"  # encoder-only, no pooling stored


def test_rank_pooling_or_classifier_labels_make_a_reranker_and_clip_a_projector() -> None:
    assert kind_from_facts(_facts("bert", **{"bert.pooling_type": 4})) == "reranker"
    assert kind_from_facts(_facts("bert", **{"bert.pooling_type": 2, "bert.classifier.output_labels": ["a"]})) \
        == "reranker"
    assert kind_from_facts(_facts("clip", **{"general.type": "mmproj"})) == "vision-projector"


def test_a_manifest_without_a_kind_reads_as_its_facts_kind(tiny_gguf: Callable[..., Path]) -> None:
    facts = read_gguf_facts(tiny_gguf())
    old = {"name": "tiny:1", "digest": "sha256:" + "0" * 64, "size": 1, "source": "file:/x",
           "facts": json.loads(facts.model_dump_json())}
    assert Manifest.model_validate(old).kind == "chat"
    bert = {**old, "facts": {**old["facts"], "architecture": "bert", "metadata": {"bert.pooling_type": 1}}}
    assert Manifest.model_validate(bert).kind == "embedding"
    # A stated kind wins, and survives a round trip through JSON.
    stated = Manifest.model_validate({**old, "kind": "embedding"})
    assert Manifest.model_validate_json(stated.model_dump_json()).kind == "embedding"
