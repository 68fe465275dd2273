"""The part of Go's text/template that Ollama prompt templates use in ``/api/generate``'s
``template`` field: ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``, and
``{{ if .X }} ... {{ else }} ... {{ end }}``, with ``{{-``/``-}}`` trimming. Anything else (range
over .Messages, functions, pipelines) is refused rather than rendered wrong."""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_FIELD = re.compile(r"\.(System|Prompt|Response)")
_IF = re.compile(r"if\s+\.(System|Prompt|Response)")


class GoTemplateError(ValueError):
    """A template using Go template features lokal does not render."""


def render_go_template(template: str, values: dict[str, str]) -> str:
    """Render ``template`` with ``values`` for System, Prompt and Response. As Ollama does for
    /api/generate, the text from ``{{ .Response }}`` on is cut: the model writes that part."""
    tokens = _lex(template)
    out, pos = _render(tokens, 0, values, stop=())
    if pos != len(tokens):
        raise GoTemplateError(f"unexpected {{{{ {tokens[pos][1]} }}}} in template")
    return out.split(_RESPONSE_MARK, 1)[0]


_RESPONSE_MARK = "\x00response\x00"


def _lex(template: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, with the whitespace trimming already applied."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos:match.start()]
        if match.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim":
            tokens.pop()
            text = text.lstrip()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        if match.group(3):
            tokens.append(("trim", ""))
        pos = match.end()
    text = template[pos:]
    if tokens and tokens[-1][0] == "trim":
        tokens.pop()
        text = text.lstrip()
    tokens.append(("text", text))
    return tokens


def _render(tokens: list[tuple[str, str]], pos: int, values: dict[str, str],
            stop: tuple[str, ...]) -> tuple[str, int]:
    parts: list[str] = []
    while pos < len(tokens):
        kind, body = tokens[pos]
        if kind == "text":
            parts.append(body)
            pos += 1
            continue
        if body in stop:
            return "".join(parts), pos
        if field := _FIELD.fullmatch(body):
            name = field.group(1)
            parts.append(_RESPONSE_MARK if name == "Response" else values.get(name, ""))
            pos += 1
        elif cond := _IF.fullmatch(body):
            then, pos = _render(tokens, pos + 1, values, stop=("else", "end"))
            other = ""
            if pos < len(tokens) and tokens[pos][1] == "else":
                other, pos = _render(tokens, pos + 1, values, stop=("end",))
            if pos >= len(tokens) or tokens[pos][1] != "end":
                raise GoTemplateError("{{ if }} without {{ end }} in template")
            name = cond.group(1)
            truthy = name == "Response" or bool(values.get(name))
            parts.append(then if truthy else other)
            pos += 1
        elif body.startswith("/*") and body.endswith("*/"):
            pos += 1  # a comment
        else:
            raise GoTemplateError(
                f"template action {{{{ {body} }}}} is not supported: lokal renders .System, .Prompt, "
                ".Response and {{ if }}/{{ else }}/{{ end }} over them"
            )
    if stop:
        raise GoTemplateError("{{ if }} without {{ end }} in template")
    return "".join(parts), pos
