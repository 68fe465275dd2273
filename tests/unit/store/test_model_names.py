"""Model names: what parses, what is refused and why."""

from __future__ import annotations

import dataclasses

import pytest

from lokal.store.errors import InvalidModelName, StoreError
from lokal.store.names import ModelName, parse_model_name


@pytest.mark.parametrize(
    ("text", "name", "tag"),
    [
        ("smollm2:135m", "smollm2", "135m"),
        ("smollm2", "smollm2", "latest"),
        ("library/x", "library/x", "latest"),
        ("hf.co/owner/repo:Q4_K_M", "hf.co/owner/repo", "Q4_K_M"),
        ("hf.co/Bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/qwen2.5-0.5b-instruct-gguf", "Q4_K_M"),
        ("SmolLM2:135M", "smollm2", "135M"),
        ("qwen2.5-coder:0.5b", "qwen2.5-coder", "0.5b"),
        ("a_b-c.d:v1.0-rc_1", "a_b-c.d", "v1.0-rc_1"),
        ("_x:_y", "_x", "_y"),
    ],
)
def test_valid_names_parse_to_lower_case_name_and_case_kept_tag(text: str, name: str, tag: str) -> None:
    parsed = parse_model_name(text)
    assert parsed == ModelName(name, tag)
    assert str(parsed) == f"{name}:{tag}"


def test_parsing_a_canonical_name_gives_it_back() -> None:
    for text in ("smollm2:135m", "hf.co/owner/repo:Q4_K_M", "a/b/c:latest"):
        assert str(parse_model_name(text)) == text


def test_model_name_is_frozen_and_hashable() -> None:
    name = parse_model_name("x:y")
    with pytest.raises(dataclasses.FrozenInstanceError):
        name.tag = "z"  # type: ignore[misc]
    assert {name, parse_model_name("X:y")} == {name}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("../../etc/passwd", '".." is not allowed'),
        ("a/../b", '".." is not allowed'),
        ("x:..", '".." is not allowed'),
        ("/abs", "absolute paths are not allowed"),
        ("/etc/passwd:latest", "absolute paths are not allowed"),
        ("", "the name is empty"),
        ("a" * 201, "longer than 200 characters"),
        ("a\\b", "backslashes are not allowed"),
        ("..\\x", "backslashes are not allowed"),
        ("a b", "spaces are not allowed"),
        ("a\tb", "spaces are not allowed"),
        ("a:b:c", 'more than one ":"'),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        (":tag", "empty path segment"),
        ("x:", 'the tag after ":" is empty'),
        (".hidden", 'segment ".hidden"'),
        ("a/./b", 'segment "."'),
        ("-flag", 'segment "-flag"'),
        ("x:tag/evil", 'tag "tag/evil"'),
        ("x:.tag", 'tag ".tag"'),
        ("a\x00b", 'segment "a\x00b"'),
        ("caf\u00e9", 'segment "caf\u00e9"'),
        ("a/b/c/d/e", "more than 4 path segments"),
        ("x" * 81, "longer than 80 characters"),
        ("x:" + "t" * 129, "the tag is longer than 128 characters"),
    ],
)
def test_invalid_names_are_refused_with_a_clear_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidModelName) as caught:
        parse_model_name(text)
    message = str(caught.value)
    assert message.startswith(f'invalid model name "{text}": ')
    assert reason in message
    assert "\n" not in message.replace(text, "")


def test_invalid_model_name_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        parse_model_name("../x")


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidModelName):
        parse_model_name(None)  # type: ignore[arg-type]
