"""Structured outputs on a live server with the official clients: every answer validates."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

pytestmark = pytest.mark.slow

MODELS = ["smollm2:135m", "gemma3:270m"]

# Nested, and bounded (maxLength, maxItems, enums) so that every answer ends well within max_tokens.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer"},
        "role": {"enum": ["engineer", "artist", "doctor", "teacher"]},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "country": {"enum": ["FR", "DE", "US", "JP", "other"]},
            },
            "required": ["city", "country"],
            "additionalProperties": False,
        },
        "retired": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "skills", "address"],
    "additionalProperties": False,
}
PROMPTS = [f"Describe a fictional {job} who lives in {city}." for job in ("engineer", "painter", "nurse", "teacher")
           for city in ("Paris", "Berlin", "Tokyo", "Boston", "Lyon")]


@pytest.fixture(scope="module")
def client(tools_server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=tools_server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _person(client: openai.OpenAI, model: str, prompt: str, seed: int) -> tuple[str | None, str | None]:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=150, temperature=0.7, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    return r.choices[0].message.content, r.choices[0].finish_reason


@pytest.mark.parametrize("model", MODELS)
def test_twenty_concurrent_prompts_all_validate_against_a_nested_schema(client: openai.OpenAI, model: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ip: _person(client, model, ip[1], ip[0]), enumerate(PROMPTS)))
    for content, finish in answers:
        assert finish == "stop", content
        jsonschema.validate(json.loads(content or ""), PERSON)


def test_json_object_answers_an_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": "Give me a JSON object about Paris."}],
        max_tokens=80, temperature=0, response_format={"type": "json_object"},
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: incomplete by design, but still the start of an object
        assert (r.choices[0].message.content or "").lstrip().startswith("{")


def test_constrained_and_unconstrained_requests_batched_together_keep_their_own_sampler(
    client: openai.OpenAI,
) -> None:
    plain = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Tell me about Lyon."}],
             "max_tokens": 40, "temperature": 0}
    alone = client.chat.completions.create(**plain).choices[0].message.content  # type: ignore[call-overload]

    def constrained(i: int) -> str | None:
        return _person(client, "smollm2:135m", PROMPTS[i], i)[0]

    def unconstrained(_: int) -> str | None:
        return client.chat.completions.create(**plain).choices[0].message.content  # type: ignore[call-overload]

    with ThreadPoolExecutor(4) as pool:
        structured = [pool.submit(constrained, i) for i in range(3)]
        free = pool.submit(unconstrained, 0)
        for f in structured:
            jsonschema.validate(json.loads(f.result() or ""), PERSON)
        assert free.result() == alone  # same text as alone: no grammar leaked into it, batching invariant


def test_bad_schema_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smollm2:135m", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}},
        )
    assert "invalid JSON schema" in str(info.value)
    assert info.value.body["param"] == "response_format"  # type: ignore[index]


@pytest.mark.parametrize(
    ("schema", "feature"),
    [({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}, "multipleOf"),
     ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
     ({"type": "string", "format": "hostname"}, "hostname")],
)
def test_unsupported_schema_feature_is_a_400_naming_it(client: openai.OpenAI, schema: dict, feature: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smollm2:135m", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert feature in str(info.value) and "not supported" in str(info.value)


def test_max_tokens_mid_json_finishes_with_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": "Describe a person."}], max_tokens=5,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    assert r.choices[0].finish_reason == "length"
    assert (r.choices[0].message.content or "").startswith("{")


def test_streamed_structured_output_validates(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=150, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}, stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


# ---- Ollama ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oclient(tools_server) -> ollama.Client:  # type: ignore[no-untyped-def]
    return ollama.Client(host=tools_server.url, timeout=300)


@pytest.mark.parametrize("model", MODELS)
def test_ollama_generate_format_json_and_chat_format_schema(oclient: ollama.Client, model: str) -> None:
    r = oclient.generate(model=model, prompt="Describe Paris in JSON.", format="json",
                         options={"temperature": 0, "num_predict": 120})
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.response), dict)
    else:
        assert r.response.lstrip().startswith("{")
    chat = oclient.chat(model=model, messages=[{"role": "user", "content": PROMPTS[3]}], format=PERSON,
                        options={"temperature": 0, "num_predict": 150})
    assert chat.done_reason == "stop"
    jsonschema.validate(json.loads(chat.message.content or ""), PERSON)


def test_ollama_streamed_schema_answer_validates(oclient: ollama.Client) -> None:
    parts = oclient.chat(model="smollm2:135m", messages=[{"role": "user", "content": PROMPTS[5]}], format=PERSON,
                         options={"temperature": 0, "num_predict": 150}, stream=True)
    jsonschema.validate(json.loads("".join(p.message.content or "" for p in parts)), PERSON)


def test_ollama_bad_format_is_a_400(tools_server) -> None:  # type: ignore[no-untyped-def]
    for fmt, words in (({"type": "integer", "multipleOf": 3}, "multipleOf"), ("yaml", "format"),
                       ({"type": "strng"}, "invalid JSON schema")):
        r = httpx.post(tools_server.url + "/api/generate", timeout=60,
                       json={"model": "smollm2:135m", "prompt": "hi", "format": fmt, "stream": False})
        assert r.status_code == 400 and words in r.json()["error"], r.text


# ---- numeric bounds (what pydantic's Field(ge=...) emits) -----------------------------------

BOUNDED = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 20},
        "delta": {"type": "integer", "exclusiveMinimum": -10, "exclusiveMaximum": -2},
        "ratio": {"type": "number", "minimum": 0.25, "exclusiveMaximum": 0.75},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True},
    },
    "required": ["count", "delta", "ratio", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("model", MODELS)
def test_numeric_bounds_and_unique_items_hold_in_every_answer(client: openai.OpenAI, model: str) -> None:
    def ask(seed: int) -> str | None:
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Give a count of 1000, a delta of 5, a ratio of 2."}],
            max_tokens=80, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": BOUNDED}})
        assert r.choices[0].finish_reason == "stop"
        return r.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        for content in pool.map(ask, range(8)):
            jsonschema.validate(json.loads(content or ""), BOUNDED)


# ---- tools: keywords only a grammar would need to enforce -------------------------------------

BOOKING = {"type": "object", "properties": {
    "guests": {"type": "integer", "minimum": 1, "maximum": 8},
    "email": {"type": "string", "format": "email"},
    "notes": {"type": "string", "maxLength": 20, "pattern": "^[a-z ]*$"},  # pattern with lengths: no grammar for it
}, "required": ["guests", "email"]}
BOOK_TOOL = [{"type": "function", "function": {"name": "book", "description": "Book a table", "parameters": BOOKING}}]
ASK_BOOKING = [{"role": "user", "content": "Book a table for two, my email is ann@example.com."}]


@pytest.mark.parametrize("tool_choice", [None, "auto"])
def test_tools_with_keywords_no_grammar_enforces_are_accepted_without_a_forced_call(
        client: openai.OpenAI, tool_choice: str | None) -> None:
    extra = {"tool_choice": tool_choice} if tool_choice else {}
    r = client.chat.completions.create(model="smollm2:135m", messages=ASK_BOOKING, tools=BOOK_TOOL,  # type: ignore[arg-type]
                                       max_tokens=20, temperature=0, **extra)  # type: ignore[arg-type]
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_forced_call_enforces_bounds_and_email_and_refuses_the_rest(client: openai.OpenAI) -> None:
    enforceable = {**BOOKING, "properties": {k: v for k, v in BOOKING["properties"].items() if k != "notes"}}
    tool = [{"type": "function", "function": {"name": "book", "parameters": enforceable}}]
    r = client.chat.completions.create(model="smollm2:135m", messages=ASK_BOOKING, tools=tool,  # type: ignore[arg-type]
                                       tool_choice="required", max_tokens=80, temperature=0)
    calls = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    jsonschema.validate(json.loads(calls[0].function.arguments), enforceable)  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2:135m", messages=ASK_BOOKING, tools=BOOK_TOOL,  # type: ignore[arg-type]
                                       tool_choice="required", max_tokens=5)
    assert info.value.body["code"] == "unsupported_schema_feature"  # type: ignore[index]
    assert "book" in info.value.body["message"] and "pattern with minLength/maxLength" in info.value.body["message"]  # type: ignore[index]


def test_ollama_chat_accepts_tools_with_keywords_no_grammar_enforces(tools_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(tools_server.url + "/api/chat", timeout=120, json={
        "model": "smollm2:135m", "messages": ASK_BOOKING, "tools": BOOK_TOOL, "stream": False,
        "options": {"num_predict": 20, "temperature": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True


# ---- llama.cpp's grammar and json_schema, vLLM's structured_outputs and guided_* -----------------

YES_NO = 'root ::= answer "."\nanswer ::= "yes" | "no"\n'


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(("fields", "check"), [
    ({"grammar": YES_NO}, lambda t: t in ("yes.", "no.")),
    ({"json_schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 9}},
                      "required": ["n"]}}, lambda t: 3 <= json.loads(t)["n"] <= 9),
    ({"structured_outputs": {"choice": ["positive", "negative"]}}, lambda t: t in ("positive", "negative")),
    ({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}, lambda t: re.fullmatch("[0-9]{3}-[a-z]{2}", t)),
    ({"structured_outputs": {"json": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}}},
     lambda t: isinstance(json.loads(t), list)),
    ({"structured_outputs": {"json_object": True}}, lambda t: isinstance(json.loads(t), dict)),
    ({"structured_outputs": {"grammar": YES_NO}}, lambda t: t in ("yes.", "no.")),
    ({"guided_choice": ["red", "green"]}, lambda t: t in ("red", "green")),
    ({"guided_json": json.dumps({"enum": [1, 2]})}, lambda t: json.loads(t) in (1, 2)),
    ({"guided_regex": "(ab){1,3}"}, lambda t: re.fullmatch("(ab){1,3}", t)),
])
def test_other_servers_constraint_fields_are_enforced(tools_server, route: str, fields: dict,  # type: ignore[no-untyped-def]
                                                      check: Any) -> None:
    body: dict[str, Any] = {"model": "smollm2:135m", "max_tokens": 60, "temperature": 0.8, "seed": 3, **fields}
    if route == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "Is the sky green? Answer."}]
    else:
        body["prompt"] = "Question: is the sky green?\nAnswer:"
    r = httpx.post(tools_server.url + route, json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    assert choice["finish_reason"] == "stop" and check(text.strip()), text


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"grammar": 'root ::= "a"{2,1}'}, "grammar", "minimum above its maximum"),  # llama.cpp loops forever on it
    ({"grammar": "root ::= " + "(" * 200 + '"a"' + ")" * 200}, "grammar", "nest deeper"),  # its stack overflows
    ({"grammar": "root ::= [z-a]"}, "grammar", "range ends below its start"),  # no token left to sample
    ({"grammar": "root ::= " + '"a" ' * 20_000}, "grammar", "limit 65536"),  # seconds of compiling
    ({"grammar": "root ::= undefined-rule"}, "grammar", "not defined"),
    ({"grammar": 7}, "grammar", "GBNF"),
    ({"json_schema": {"type": "strng"}}, "json_schema", "invalid JSON schema"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag", "not supported"),
    ({"structured_outputs": {"choice": ["a"], "regex": "b"}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "non-empty"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"grammar": YES_NO, "guided_choice": ["a"]}, "guided_choice", "only one output constraint"),
    ({"grammar": YES_NO, "response_format": {"type": "json_object"}}, "grammar", "only one output constraint"),
])
def test_bad_or_conflicting_constraints_are_a_400_naming_the_field(tools_server, fields: dict, param: str,  # type: ignore[no-untyped-def]
                                                                   words: str) -> None:
    r = httpx.post(tools_server.url + "/v1/chat/completions", timeout=60, json={
        "model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert httpx.get(tools_server.url + "/health", timeout=10).status_code == 200
