"""Tool definitions, tool_choice, the fallback prompt, and parsing calls out of model output."""

from __future__ import annotations

import json

import pytest

from lokal.runtime.errors import InvalidRequest
from lokal.runtime.pipeline import output_grammar
from lokal.runtime.request import JsonOutput
from lokal.runtime.tools import (
    CallSniffer,
    Tool,
    argument_fragments,
    call_grammar,
    chosen_tools,
    conversation,
    has_native_tools,
    parse_calls,
    parse_tools,
)
from lokal.server.ollama.generate import json_format
from lokal.server.openai.routes import response_format

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}}),
         Tool("add", "", {"type": "object", "properties": {"a": {"type": "integer"}}})]


def test_tools_are_parsed_and_checked() -> None:
    tools = parse_tools([WEATHER])
    assert tools[0].name == "get_weather" and tools[0].parameters["required"] == ["city"]
    with pytest.raises(InvalidRequest, match="defined twice"):
        parse_tools([WEATHER, WEATHER])
    with pytest.raises(InvalidRequest, match="function.name"):
        parse_tools([{"type": "function", "function": {"name": "has space"}}])


def test_a_tool_with_an_unsupported_schema_feature_is_refused_by_name_when_a_call_is_forced() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}}
    tools = parse_tools([bad])  # tool_choice auto: no grammar, nothing to refuse
    with pytest.raises(InvalidRequest) as info:
        call_grammar(tools)
    assert "multipleOf" in str(info.value.message)


def test_tool_choice_variants() -> None:
    assert chosen_tools(TOOLS, "auto") == (TOOLS, False)
    assert chosen_tools(TOOLS, "none") == ([], False)
    assert chosen_tools(TOOLS, "required") == (TOOLS, True)
    assert chosen_tools(TOOLS, {"type": "function", "function": {"name": "add"}}) == ([TOOLS[1]], True)
    with pytest.raises(InvalidRequest, match="not in tools"):
        chosen_tools(TOOLS, {"type": "function", "function": {"name": "nope"}})


def test_call_grammar_covers_every_function() -> None:
    grammar = call_grammar(TOOLS)
    assert "get_weather" in grammar and "add" in grammar


def test_response_format_and_format_become_one_output_constraint() -> None:
    assert response_format(None) is None and response_format({"type": "text"}) is None
    assert json_format(None) is None and json_format("") is None
    any_object = response_format({"type": "json_object"})
    assert any_object is not None and any_object.schema is None
    assert json_format("json") == JsonOutput(None, "format")
    assert "root ::=" in output_grammar(any_object)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == \
        JsonOutput(schema, "response_format")
    with pytest.raises(InvalidRequest) as info:
        output_grammar(JsonOutput({"not": {}}, "response_format"))
    assert "'not'" in info.value.message and info.value.param == "response_format"
    for bad in ({"type": "yaml"}, {"type": "json_schema", "json_schema": {"name": "x"}}):
        with pytest.raises(InvalidRequest):
            response_format(bad)
    with pytest.raises(InvalidRequest, match="format must be"):
        json_format(["json"])


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',  # cut before the close tag
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
    ],
)
def test_calls_are_parsed_from_every_accepted_form(text: str) -> None:
    content, calls = parse_calls(text, TOOLS)
    assert content == ""
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")


def test_text_and_unknown_functions_stay_content() -> None:
    assert parse_calls("It is sunny.", TOOLS) == ("It is sunny.", [])
    text = '{"name": "launch_missiles", "arguments": {}}'
    assert parse_calls(text, TOOLS) == (text, [])
    assert parse_calls('{"city": "Paris"}', TOOLS)[1] == []


def test_content_before_a_call_is_kept() -> None:
    content, calls = parse_calls('Let me check. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', TOOLS)
    assert content == "Let me check." and calls[0].arguments == {"a": 1}


def test_sniffer_streams_text_and_holds_back_a_call() -> None:
    sniffer = CallSniffer(TOOLS)
    parts = ["Sure", ", let me", " check <tool", '_call>{"name": "add", ', '"arguments": {"a": 2}}']
    out = [sniffer.feed(p) for p in parts]
    assert "".join(out) == "Sure, let me check "
    content, calls = sniffer.finish()
    assert content == "" and calls[0].name == "add"


def test_sniffer_releases_json_that_is_not_a_call() -> None:
    sniffer = CallSniffer(TOOLS)
    assert sniffer.feed('{"a": 1}') == ""
    assert sniffer.finish() == ('{"a": 1}', [])


def test_sniffer_cut_off_call_stays_text() -> None:
    sniffer = CallSniffer(TOOLS, forced=True)
    sniffer.feed('{"name": "add", "arguments": {"a": 1}}')
    assert sniffer.finish(parse=False) == ('{"name": "add", "arguments": {"a": 1}}', [])


def test_argument_fragments_reassemble() -> None:
    args = json.dumps({"city": "Paris", "days": [1, 2, 3], "unit": "celsius"})
    pieces = argument_fragments(args)
    assert len(pieces) > 1 and "".join(pieces) == args


def test_fallback_conversation_describes_tools_and_replays_calls() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    out = conversation(messages, TOOLS, native=False)
    assert out[0]["role"] == "system" and "<tool_call>" in out[0]["content"] and "get_weather" in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'}
    assert out[3]["role"] == "user" and '"name": "get_weather"' in out[3]["content"] and "sunny" in out[3]["content"]


def test_native_conversation_keeps_tool_messages_for_the_template() -> None:
    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "2", "tool_call_id": "c"}]
    out = conversation(messages, TOOLS, native=True)
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert out[1]["role"] == "tool" and out[1]["name"] == "add"


def test_native_tool_syntax_is_detected_in_templates() -> None:
    assert has_native_tools("{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}")
    assert not has_native_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
