"""Ollama Go templates translated into Jinja chat templates: rendered as Ollama renders them."""

from __future__ import annotations

import pytest

from lokal.templates.chat_template import ChatTemplate
from lokal.templates.go_template import GoTemplateError, go_to_jinja, looks_like_go_template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]

# Ollama's classic ChatML template (no .Messages): rendered once per turn, the last cut at .Response.
LEGACY_CHATML = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""

MESSAGES_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "system" }}{{ continue }}{{ end }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

EXPECTED_CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
)


def render(go: str, messages: list[dict[str, str]] = CONVERSATION) -> str:
    return ChatTemplate(go_to_jinja(go)).render(messages, add_generation_prompt=True)


def test_legacy_template_renders_each_turn_and_cuts_the_last_at_response() -> None:
    assert render(LEGACY_CHATML) == EXPECTED_CHATML


def test_messages_template_with_range_eq_and_continue() -> None:
    assert render(MESSAGES_CHATML) == EXPECTED_CHATML


def test_system_inside_range_via_dollar_and_else_if_chains() -> None:
    go = (
        '{{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}|'
        '{{ else if eq .Role "assistant" }}A:{{ .Content }}|{{ else }}S:{{ $.System }}|{{ end }}{{ end }}'
    )
    assert render(go) == "S:Be brief.|U:Hi|A:Hello!|U:Bye|"


def test_not_and_or_ne_and_comments() -> None:
    go = '{{/* a comment */}}{{ range .Messages }}{{ if and (ne .Role "system") (not (eq .Content "Hi")) }}'
    go += '[{{ .Content }}]{{ end }}{{ if or (eq .Role "x") (eq .Role "system") }}!{{ end }}{{ end }}'
    assert render(go) == "![Hello!][Bye]"


def test_a_template_for_both_modes_takes_the_messages_branch() -> None:
    go = (
        "{{ if .Messages }}{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}"
        "{{ else }}{{ .System }}|{{ .Prompt }}|{{ .Response }}{{ end }}"
    )
    assert render(go) == "<system>Be brief.<user>Hi<assistant>Hello!<user>Bye"


def test_trim_markers_remove_whitespace_like_go() -> None:
    go = "A  \n  {{- .Prompt -}}  \n  B{{ .Response }}"
    assert render(go, [{"role": "user", "content": "p"}]) == "ApB"


def test_legacy_template_without_system_or_history() -> None:
    assert render(LEGACY_CHATML, [{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_text_is_output_literally_even_jinja_comments_quotes_and_unicode() -> None:
    assert render("{{ .Prompt }} {# not a comment #} 'q' \"dq\" \\ é 🙂", [{"role": "user", "content": "x"}]) == (
        "x {# not a comment #} 'q' \"dq\" \\ é 🙂"
    )


@pytest.mark.parametrize(
    ("text", "is_go"),
    [
        ("{{ .Prompt }}", True),
        ("{{- if .System }}x{{ end }}", True),
        ("{{ range .Messages }}{{ end }}", True),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", False),
        ("{{ bos_token }}{{ messages[0].content }}", False),
        ("plain text", False),
    ],
)
def test_go_templates_are_told_from_jinja(text: str, is_go: bool) -> None:
    assert looks_like_go_template(text) is is_go


@pytest.mark.parametrize(
    ("go", "expected"),
    [
        ("{{ .Tools }}", ".Tools is not supported"),
        ("{{ range $i, $m := .Messages }}{{ end }}", "only {{ range .Messages }} is supported"),
        ("{{ range .Messages }}{{ range .Messages }}{{ end }}{{ end }}", "nested {{ range }}"),
        ("{{ range .Messages }}{{ .System }}{{ end }}", ".System is not supported inside range"),
        ("{{ .Content }}", ".Content is not supported outside range"),
        ("{{ if .System }}x", "missing {{ end }}"),
        ("{{ end }}", "without a matching"),
        ("{{ .System | printf }}", "is not supported"),
        ("{{ len .Messages }}", 'function "len" is not supported'),
        ("{{ if eq .System }}x{{ end }}", "eq takes at least two arguments"),
        ("{{ if (eq .System \"a\" }}x{{ end }}", "unbalanced parentheses"),
        ("{{ .Prompt ", "unterminated {{"),
        ("{{ with .System }}{{ . }}{{ end }}", "is not supported"),
    ],
)
def test_unsupported_go_is_refused_with_a_reason(go: str, expected: str) -> None:
    with pytest.raises(GoTemplateError) as info:
        go_to_jinja(go)
    assert expected in str(info.value)


def test_deep_nesting_is_refused() -> None:
    go = "{{ if .System }}" * 100 + "x" + "{{ end }}" * 100
    with pytest.raises(GoTemplateError, match="nested more than"):
        go_to_jinja(go)
