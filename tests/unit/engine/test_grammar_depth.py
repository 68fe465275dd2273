"""Any JSON schema, however deep, large or odd, is a SchemaError or a grammar: never a RecursionError,
a grammar llama.cpp cannot parse (or crashes on), or a converter that never returns."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from lokal.engine.grammar import (
    MAX_JSON_DEPTH,
    MAX_OPTIONAL_PROPERTIES,
    MAX_REPETITION,
    MAX_SCHEMA_DEPTH,
    SchemaError,
    check_schema,
    schema_grammar,
)
from lokal.engine.llama_model import LlamaModel
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.pipeline import output_grammar
from lokal.runtime.request import JsonOutput
from lokal.runtime.tools import MAX_ARGUMENT_DEPTH, Tool, call_grammar, call_message, parse_calls, parse_tools

TOO_DEEP = f"nests deeper than {MAX_SCHEMA_DEPTH} levels"


def wrap(depth: int, make: Callable[[Any], Any], leaf: Any = None) -> Any:
    value = {"type": "string"} if leaf is None else leaf
    for _ in range(depth):
        value = make(value)
    return value


NESTINGS: dict[str, Callable[[Any], Any]] = {
    "properties": lambda s: {"type": "object", "properties": {"a": s}},
    "items": lambda s: {"type": "array", "items": s},
    "anyOf": lambda s: {"anyOf": [s, {"type": "null"}]},
    "prefixItems": lambda s: {"type": "array", "prefixItems": [s]},
    "additionalProperties": lambda s: {"type": "object", "additionalProperties": s},
    "$defs": lambda s: {"$defs": {"d": s}, "type": "object"},
    "not": lambda s: {"not": s},  # unsupported, but jsonschema's metaschema check recursed into it first
}


@pytest.mark.parametrize("depth", [50, 200, 1000, 100_000])
@pytest.mark.parametrize("keyword", sorted(NESTINGS))
def test_any_depth_is_a_schema_error_never_a_recursion_error(keyword: str, depth: int) -> None:
    schema = wrap(depth, NESTINGS[keyword])
    for check in (check_schema, schema_grammar):
        with pytest.raises(SchemaError) as info:
            check(schema)
        if keyword == "not" and depth <= MAX_JSON_DEPTH:  # shallow enough to reach the feature check
            assert info.value.feature == "not"
        else:
            assert TOO_DEEP in str(info.value)


@pytest.mark.parametrize("key", ["const", "default", "enum", "examples"])
def test_deep_values_inside_a_schema_are_refused(key: str) -> None:
    value = wrap(100_000, lambda v: [v], leaf=1)
    with pytest.raises(SchemaError, match=TOO_DEEP):
        schema_grammar({key: [value] if key in ("enum", "examples") else value})
    schema_grammar({"const": wrap(MAX_JSON_DEPTH - 2, lambda v: [v], leaf=1)})  # within the bound: fine


def test_the_schema_depth_limit_is_exact() -> None:
    for keyword in ("items", "properties", "anyOf"):
        schema_grammar(wrap(MAX_SCHEMA_DEPTH, NESTINGS[keyword]))
        with pytest.raises(SchemaError, match=f"{TOO_DEEP}$"):
            schema_grammar(wrap(MAX_SCHEMA_DEPTH + 1, NESTINGS[keyword]))


def ref_chain(hops: int) -> dict[str, Any]:
    defs = {f"a{i}": {"type": "object", "properties": {"n": {"$ref": f"#/$defs/a{i + 1}"}}} for i in range(hops)}
    return {"type": "object", "properties": {"x": {"$ref": "#/$defs/a0"}},
            "$defs": {**defs, f"a{hops}": {"type": "string"}}}


def test_ref_hops_count_as_levels_and_recursive_refs_are_fine() -> None:
    schema_grammar(ref_chain(15))  # 1 + 15 * 2 levels
    with pytest.raises(SchemaError, match=TOO_DEEP):
        schema_grammar(ref_chain(16))
    with pytest.raises(SchemaError, match=TOO_DEEP):
        check_schema(ref_chain(5000))
    tree = {"type": "object", "properties": {"root": {"$ref": "#/$defs/node"}}, "$defs": {"node": {
        "type": "object", "properties": {"name": {"type": "string"}, "kids": {"type": "array", "items": {
            "$ref": "#/$defs/node"}}}}}}
    assert "kids" in schema_grammar(tree)


def test_self_referencing_and_exponentially_shared_python_objects_are_refused_quickly() -> None:
    cycle: dict[str, Any] = {"type": "object", "properties": {}}
    cycle["properties"]["self"] = cycle
    shared: dict[str, Any] = {"type": "string"}
    for _ in range(34):  # 2**34 paths, within the depth bound: json.dumps would never finish
        shared = {"anyOf": [shared, shared]}
    for schema in (cycle, shared):
        with pytest.raises(SchemaError):
            check_schema(schema)
        with pytest.raises(SchemaError):
            schema_grammar(schema)


def test_deeply_nested_pattern_groups_are_refused() -> None:
    deep = {"type": "string", "pattern": "^" + "(" * 5000 + "a" + ")" * 5000 + "$"}
    with pytest.raises(SchemaError, match="nests groups deeper"):
        check_schema(deep)
    keys = {"type": "object", "patternProperties": {"(" * 5000 + ")" * 5000: {}}}
    with pytest.raises(SchemaError, match="nests groups deeper"):
        check_schema(keys)
    schema_grammar({"type": "string", "pattern": "^" + "(" * 20 + "a" + ")" * 20 + "$"})


@pytest.mark.parametrize(
    ("schema", "feature"),
    [
        ({"type": "string", "maxLength": 100_000}, "maxLength above 1000"),
        ({"type": "string", "minLength": 10**9}, "minLength above 1000"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 5000}, "maxItems above 1000"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 5000}, "minItems above 1000"),
        ({"type": "string", "pattern": "^a{0,100000}$"}, "pattern repetition above 1000"),
        ({"type": "string", "pattern": "^(ab){5000}$"}, "pattern repetition above 1000"),
        ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(2000)}},
         f"more than {MAX_OPTIONAL_PROPERTIES} optional properties"),
    ],
)
def test_repetitions_the_grammar_parser_cannot_take_are_refused_by_name(schema: dict[str, Any],
                                                                        feature: str) -> None:
    with pytest.raises(SchemaError) as info:
        schema_grammar(schema)
    assert info.value.feature == feature
    check_schema(schema)  # a fine schema otherwise: a tool's parameters may say so (no grammar is built)


def run_with_timeout(fn: Callable[[], Any], seconds: float = 20) -> BaseException | Any:
    """fn's result or exception; fails if it does not return (the thread is a daemon)."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"did not return within {seconds} s"
    return out[0]


@pytest.mark.parametrize(("pattern", "char"), [("^a}$", "}"), ("^a]$", "]"), ("^[]a]$", "]"), ("^a\\{5}$", "}"),
                                               ("^x{2}}$", "}")])
def test_patterns_the_converter_would_loop_on_forever_are_refused(pattern: str, char: str) -> None:
    result = run_with_timeout(lambda: schema_grammar({"type": "string", "pattern": pattern}))
    assert isinstance(result, SchemaError) and result.feature == f"pattern with an unescaped {char!r}"


@pytest.mark.parametrize("pattern", ["^a\\{5\\}$", "^[0-9]{4}-[0-9]{2}$", "^(ab|c[d-f]+)?x*\\.y$", "^[\\]a]+$",
                                     "^a{1000}$", "^\"q\"$"])
def test_ordinary_patterns_still_convert(pattern: str) -> None:
    assert "root ::=" in run_with_timeout(lambda: schema_grammar({"type": "string", "pattern": pattern}))


def test_grammars_at_the_limits_compile_in_llama_cpp(llama: LlamaModel) -> None:
    for schema in (
        {"type": "string", "maxLength": MAX_REPETITION},
        {"type": "string", "minLength": MAX_REPETITION, "maxLength": MAX_REPETITION},
        {"type": "array", "items": {"type": "integer"}, "maxItems": MAX_REPETITION},
        {"type": "string", "pattern": "^a{0,1000}$"},
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(MAX_OPTIONAL_PROPERTIES)}},
        wrap(MAX_SCHEMA_DEPTH, NESTINGS["anyOf"]),
        ref_chain(15),
    ):
        assert run_with_timeout(lambda s=schema: llama.check_grammar(schema_grammar(s))) is None  # not an error


# ---- the runtime's walks over client JSON: tools, tool-call arguments, the error's field --------

def test_deep_tool_parameters_are_an_invalid_request_naming_the_tool() -> None:
    for depth in (50, 200, 100_000):
        tool = {"type": "function", "function": {"name": "f", "parameters": wrap(depth, NESTINGS["properties"])}}
        with pytest.raises(InvalidRequest) as info:
            parse_tools([tool])
        assert info.value.param == "tools.0.function.parameters" and info.value.code == "invalid_schema"
        assert info.value.message.startswith("tools[0] (f): ") and TOO_DEEP in info.value.message


def test_a_forced_call_whose_wrapper_nests_too_deep_names_tools() -> None:
    params = wrap(MAX_SCHEMA_DEPTH, NESTINGS["properties"])  # fine alone; the call schema adds a level
    with pytest.raises(InvalidRequest) as info:
        call_grammar([Tool("f", "", params)])
    assert info.value.param == "tools" and info.value.message.startswith("tools: ")


@pytest.mark.parametrize("param", ["format", "response_format"])
def test_the_output_schema_error_names_its_field(param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        output_grammar(JsonOutput(wrap(10_000, NESTINGS["items"]), param))
    assert info.value.param == param and info.value.message.startswith(f"{param}: ")
    assert TOO_DEEP in info.value.message


def test_deep_tool_call_arguments_in_a_request_are_refused() -> None:
    deep_text = '{"x":' + "[" * 100_000 + "]" * 100_000 + "}"
    deep_obj = {"x": wrap(MAX_ARGUMENT_DEPTH + 5, lambda v: [v], leaf=1)}
    for args in (deep_text, deep_obj):
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}
        with pytest.raises(InvalidRequest, match="nests deeper than") as info:
            call_message(call, "messages[1].tool_calls[0]")
        assert info.value.param == "messages"
    ok = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": [[1]]}'}}
    assert call_message(ok, "m")["function"]["arguments"] == {"x": [[1]]}


def test_a_model_answer_that_nests_deeply_stays_text() -> None:
    tools = [Tool("f", "", {"type": "object"})]
    for text in ("[" * 100_000, '{"name": "f", "arguments": ' + "[" * 50_000 + "]" * 50_000 + "}",
                 '<tool_call>{"name": "f", "arguments": {"a": ' + "[" * 5000 + "]" * 5000 + "}}</tool_call>"):
        content, calls = parse_calls(text, tools)
        assert calls == [] and content == text
    assert parse_calls('{"name": "f", "arguments": {"a": [[1]]}}', tools)[1][0].arguments == {"a": [[1]]}
