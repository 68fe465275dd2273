"""A tool's parameters are only refused for keywords a grammar cannot enforce when a grammar is
built from them (a forced call); with tool_choice auto the model only reads them."""

from __future__ import annotations

import pytest

from lokal.runtime.errors import InvalidRequest
from lokal.runtime.tools import call_grammar, parse_tools

PYDANTIC_LIKE = {"type": "object", "properties": {
    "count": {"type": "integer", "minimum": 1, "title": "Count"},
    "email": {"type": "string", "format": "email"},
    "step": {"type": "number", "multipleOf": 0.5},
    "seen": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
}, "required": ["count"]}


def tool(parameters: dict) -> dict:
    return {"type": "function", "function": {"name": "book", "parameters": parameters}}


def test_keywords_no_grammar_enforces_are_accepted_when_no_grammar_is_built() -> None:
    tools = parse_tools([tool(PYDANTIC_LIKE)])
    assert tools[0].parameters == PYDANTIC_LIKE


def test_a_forced_call_refuses_what_the_grammar_cannot_enforce_naming_the_tool() -> None:
    tools = parse_tools([tool(PYDANTIC_LIKE)])
    with pytest.raises(InvalidRequest) as info:
        call_grammar(tools)
    assert info.value.code == "unsupported_schema_feature" and info.value.message.startswith("tools (book): ")
    assert "multipleOf" in info.value.message


def test_a_forced_call_with_bounds_and_email_gets_a_grammar() -> None:
    enforceable = {**PYDANTIC_LIKE, "properties": {k: v for k, v in PYDANTIC_LIKE["properties"].items()
                                                    if k in ("count", "email")}}
    assert "root ::=" in call_grammar(parse_tools([tool(enforceable)]))


@pytest.mark.parametrize("parameters", [{"type": "strng"}, {"type": "object", "properties": []}])
def test_invalid_parameters_are_still_refused_without_a_grammar(parameters: dict) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_tools([tool(parameters)])
    assert info.value.code == "invalid_schema" and info.value.param == "tools.0.function.parameters"
