"""hf.co names and the choice of a GGUF file in a repository."""

from __future__ import annotations

import pytest

from lokal.store.errors import PullError
from lokal.store.sources.hf import is_hf_name, pick_gguf, split_hf_name

FILES = [
    "README.md",
    "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf",
    "Qwen2.5-0.5B-Instruct-Q4_K_S.gguf",
    "Qwen2.5-0.5B-Instruct-Q8_0.gguf",
    "mmproj-f16.gguf",
    "config.json",
]


@pytest.mark.parametrize(
    ("text", "repo", "selector"),
    [
        ("hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", None),
        ("hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:latest", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", None),
        ("hf.co/owner/repo:Q4_K_M", "owner/repo", "Q4_K_M"),
        ("huggingface.co/owner/repo:model.Q8_0.gguf", "owner/repo", "model.Q8_0.gguf"),
        ("HF.CO/Owner/Repo:q8_0", "Owner/Repo", "q8_0"),
    ],
)
def test_split_keeps_the_hubs_case(text: str, repo: str, selector: str | None) -> None:
    assert is_hf_name(text)
    assert split_hf_name(text) == (repo, selector)


@pytest.mark.parametrize("text", ["hf.co/owner", "hf.co/a/b/c", "hf.co//repo", "smollm2:135m"])
def test_split_refuses_names_that_are_not_owner_and_repo(text: str) -> None:
    with pytest.raises(PullError):
        split_hf_name(text)


def test_default_pick_is_q4_k_m() -> None:
    assert pick_gguf("o/r", FILES, None) == "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"


def test_default_pick_is_the_only_model_gguf_ignoring_projectors() -> None:
    assert pick_gguf("o/r", ["a-Q8_0.gguf", "mmproj-a.gguf", "README.md"], None) == "a-Q8_0.gguf"


def test_pick_by_quant_ignores_case() -> None:
    assert pick_gguf("o/r", FILES, "q8_0") == "Qwen2.5-0.5B-Instruct-Q8_0.gguf"
    assert pick_gguf("o/r", FILES, "Q4_K_S") == "Qwen2.5-0.5B-Instruct-Q4_K_S.gguf"


def test_pick_by_exact_file_name_wins_over_substrings() -> None:
    files = ["m-Q4_K_M.gguf", "m-Q4_K_M-imat.gguf"]
    assert pick_gguf("o/r", files, "m-Q4_K_M.gguf") == "m-Q4_K_M.gguf"
    assert pick_gguf("o/r", FILES, "mmproj-f16.gguf") == "mmproj-f16.gguf"


def test_ambiguous_selector_lists_the_candidates() -> None:
    with pytest.raises(PullError) as caught:
        pick_gguf("o/r", FILES, "Q4_K")
    assert str(caught.value) == (
        '"Q4_K" is ambiguous in hf.co/o/r; pick one of: '
        "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf, Qwen2.5-0.5B-Instruct-Q4_K_S.gguf"
    )


def test_missing_selector_lists_every_gguf() -> None:
    with pytest.raises(PullError, match=r'"Q2_K" matches no file in hf.co/o/r; pick one of: .*Q4_K_M.*mmproj-f16.gguf'):
        pick_gguf("o/r", FILES, "Q2_K")


def test_no_default_among_several_files_is_ambiguous() -> None:
    with pytest.raises(PullError, match="ambiguous.*a-Q8_0.gguf, b-Q8_0.gguf"):
        pick_gguf("o/r", ["a-Q8_0.gguf", "b-Q8_0.gguf"], None)


def test_a_repo_without_gguf_files_is_refused() -> None:
    with pytest.raises(PullError, match="has no .gguf file"):
        pick_gguf("o/r", ["model.safetensors"], None)
