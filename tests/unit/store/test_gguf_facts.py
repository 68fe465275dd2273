"""GGUF facts from generated files, agreement with gguf.GGUFReader, and hostile inputs."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from lokal.store.errors import InvalidGguf
from lokal.store.gguf_facts import ArraySummary, GgufFacts, read_gguf_facts
from lokal.store.gguf_header import read_gguf_header

MakeGguf = Callable[..., Path]


def test_facts_of_a_tiny_llama_file(tiny_gguf: MakeGguf) -> None:
    facts = read_gguf_facts(tiny_gguf(seed=3))
    assert facts.architecture == "llama"
    assert facts.name == "tiny-3"
    assert facts.quantization == "Q8_0"  # from general.file_type
    assert facts.context_length == 256
    assert facts.embedding_length == 32
    assert facts.block_count == 1
    assert facts.head_count == 4
    assert facts.head_count_kv == 2
    assert facts.license == "mit"
    assert facts.chat_template is not None and "messages" in facts.chat_template
    assert facts.tensor_count == 4
    assert facts.parameter_count == 64 * 32 + 32 + 2 * 64 * 64  # summed tensor elements


def test_metadata_keeps_scalars_and_small_arrays_and_summarises_big_ones(tiny_gguf: MakeGguf) -> None:
    meta = read_gguf_facts(tiny_gguf(n_vocab=64)).metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 256
    assert meta["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32 shown short
    assert meta["general.tags"] == ["tiny", "test"]
    assert meta["tokenizer.ggml.tokens"] == ArraySummary(element_type="string", length=64)
    assert meta["tokenizer.ggml.scores"] == ArraySummary(element_type="float32", length=64)


def test_facts_survive_a_json_round_trip(tiny_gguf: MakeGguf) -> None:
    facts = read_gguf_facts(tiny_gguf())
    assert GgufFacts.model_validate_json(facts.model_dump_json()) == facts


def test_parameter_count_key_wins_over_summed_tensors(tiny_gguf: MakeGguf) -> None:
    assert read_gguf_facts(tiny_gguf(parameter_count=135_000_000)).parameter_count == 135_000_000


def test_quantization_is_inferred_from_the_dominant_tensor_type_without_file_type(tiny_gguf: MakeGguf) -> None:
    assert read_gguf_facts(tiny_gguf(file_type=None)).quantization == "Q8_0"


@pytest.mark.parametrize(
    ("file_type", "name"), [(0, "F32"), (1, "F16"), (3, "Q4_1"), (15, "Q4_K_M"), (1024 + 15, "Q4_K_M")]
)
def test_file_type_maps_to_llama_cpp_names(tiny_gguf: MakeGguf, file_type: int, name: str) -> None:
    assert read_gguf_facts(tiny_gguf(file_type=file_type)).quantization == name


def test_unknown_file_type_falls_back_to_tensor_types(tiny_gguf: MakeGguf) -> None:
    assert read_gguf_facts(tiny_gguf(file_type=999)).quantization == "Q8_0"


def test_file_without_template_or_arch_keys_has_none_for_them(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_tensor("w", np.zeros((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    facts = read_gguf_facts(path)
    assert facts.architecture == "gemma3"
    assert facts.chat_template is None and facts.context_length is None and facts.license is None
    assert facts.quantization == "F16"
    assert facts.parameter_count == 32


def test_header_reader_agrees_with_gguf_reader(tiny_gguf: MakeGguf) -> None:
    path = tiny_gguf(seed=5)
    ours = read_gguf_header(path)
    theirs = GGUFReader(path)
    assert ours.data_offset == theirs.data_offset
    assert [(t.name, t.type, t.n_elements, t.n_bytes, ours.data_offset + t.offset) for t in ours.tensors] == [
        (t.name, t.tensor_type, t.n_elements, t.n_bytes, t.data_offset) for t in theirs.tensors
    ]
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if field.types[0] == GGUFValueType.ARRAY:
            expected = field.contents()
            assert value == expected or getattr(value, "length", None) == len(expected), key
        elif field.types[0] == GGUFValueType.FLOAT32:
            assert value == pytest.approx(field.contents()), key
        else:
            assert value == field.contents(), key


# -- hostile files -------------------------------------------------------------------------


def _assert_refused(path: Path) -> InvalidGguf:
    with pytest.raises(InvalidGguf) as caught:
        read_gguf_facts(path)
    assert str(caught.value).startswith(f"{path} is not a valid GGUF file: ")
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    "content",
    [b"", b"GGUF", b"hello world, not a model at all", b"\x00" * 4096, b"GGUF\x01\x00\x00\x00" + b"\x00" * 32],
)
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(content)
    _assert_refused(path)


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "nope.gguf")
    _assert_refused(tmp_path)


def test_impossible_counts_are_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62) + b"\x00" * 64)
    assert "impossible counts" in str(_assert_refused(path))


def test_huge_string_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "string.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60) + b"k" * 64)
    assert "truncated" in str(_assert_refused(path))


def test_truncated_file_is_refused_at_every_cut(tiny_gguf: MakeGguf, tmp_path: Path) -> None:
    data = tiny_gguf().read_bytes()
    header_end = read_gguf_header(tiny_gguf()).data_offset
    cut_path = tmp_path / "cut.gguf"
    for cut in [*range(0, header_end + 8, 3), *range(header_end + 8, len(data), 97)]:
        cut_path.write_bytes(data[:cut])
        _assert_refused(cut_path)


def test_random_corruption_gives_facts_or_invalid_gguf_only(tiny_gguf: MakeGguf, tmp_path: Path) -> None:
    path = tiny_gguf()
    data = path.read_bytes()
    header_end = read_gguf_header(path).data_offset
    rng = random.Random(1234)
    bad = tmp_path / "bad.gguf"
    outcomes = {"facts": 0, "refused": 0}
    for _ in range(200):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(header_end)
            mutated[pos] = rng.randrange(256)
        bad.write_bytes(bytes(mutated))
        try:
            read_gguf_facts(bad)
            outcomes["facts"] += 1
        except InvalidGguf:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
