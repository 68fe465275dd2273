"""Output constraints other servers accept beside OpenAI's ``response_format``, on /v1/chat/completions
and /v1/completions: llama.cpp's ``grammar`` (GBNF) and ``json_schema``, vLLM's
``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``) and its older
``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar``. Each becomes the
request's ``JsonOutput`` or a checked GBNF grammar; a malformed one, or one lokal cannot
enforce, is a 400 naming the field, never an answer that ignores it."""

from __future__ import annotations

import json
from typing import Any

from lokal.engine.gbnf import GbnfError, check_gbnf
from lokal.engine.grammar import SchemaError, choice_grammar, regex_grammar
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.request import JsonOutput
from lokal.runtime.tools import schema_error

# vLLM's structured_outputs keys lokal enforces; the others it names are refused.
_STRUCTURED = ("json", "regex", "choice", "grammar", "json_object")
# Keys that only tune how vLLM's backends run, with nothing to enforce.
_STRUCTURED_HINTS = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties", "backend")
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
# A client's GBNF is compiled by pure-Python code before llguidance sees it (about 0.5 s for
# 64 KB); lokal's own grammars from schemas, bounded by the schema's limits, may be larger.
MAX_CLIENT_GRAMMAR_CHARS = 64 * 1024


def output_constraint(fields: dict[str, Any], response_format: JsonOutput | None
                      ) -> tuple[JsonOutput | None, str | None]:
    """(JSON output, GBNF grammar) from the request's constraint fields (``fields``: name → value
    as sent, None when absent); at most one constraint may be given."""
    given = [name for name, value in fields.items() if value is not None]
    if response_format is not None:
        given.insert(0, "response_format")
    if len(given) > 1:
        raise InvalidRequest(f"only one output constraint may be given; this request has {', '.join(given)}",
                             param=given[1])
    if not given or given[0] == "response_format":
        return response_format, None
    name = given[0]
    value = fields[name]
    if name == "structured_outputs":
        return _structured(value)
    kind = {"grammar": "grammar", "json_schema": "json", "guided_json": "json", "guided_regex": "regex",
            "guided_choice": "choice", "guided_grammar": "grammar"}[name]
    return _one(kind, value, name)


def _structured(value: Any) -> tuple[JsonOutput | None, str | None]:
    param = "structured_outputs"
    if not isinstance(value, dict):
        raise InvalidRequest("structured_outputs must be an object", param=param)
    unknown = sorted(set(value) - set(_STRUCTURED) - set(_STRUCTURED_HINTS))
    if unknown:
        raise InvalidRequest(f"structured_outputs.{unknown[0]} is not supported; lokal enforces "
                             f"{', '.join(_STRUCTURED)}", param=f"{param}.{unknown[0]}")
    kinds = [k for k in _STRUCTURED if value.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise InvalidRequest(f"structured_outputs needs exactly one of {', '.join(_STRUCTURED)}", param=param)
    return _one(kinds[0], value[kinds[0]], f"{param}.{kinds[0]}")


def _one(kind: str, value: Any, param: str) -> tuple[JsonOutput | None, str | None]:
    if kind == "json_object":
        return JsonOutput(None, param), None
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise InvalidRequest(f"{param} is not valid JSON: {exc}", param=param, code="invalid_schema") from exc
        if not isinstance(value, dict):
            raise InvalidRequest(f"{param} must be a JSON schema object", param=param, code="invalid_schema")
        return JsonOutput(value, param), None
    try:
        if kind == "regex":
            return None, regex_grammar(value)
        if kind == "choice":
            return None, choice_grammar(value)
    except SchemaError as exc:
        raise schema_error(exc, param) from exc
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a GBNF grammar (a string)", param=param, code="invalid_grammar")
    try:
        check_gbnf(value, MAX_CLIENT_GRAMMAR_CHARS)
    except GbnfError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param, code="invalid_grammar") from exc
    return None, value
