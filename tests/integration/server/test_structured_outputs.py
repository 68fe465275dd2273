"""Structured outputs on a live server with the official clients: every answer validates."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

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
    [({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}, "minimum"),
     ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
     ({"type": "string", "format": "email"}, "email")],
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
    for fmt, words in (({"type": "integer", "maximum": 3}, "maximum"), ("yaml", "format"),
                       ({"type": "strng"}, "invalid JSON schema")):
        r = httpx.post(tools_server.url + "/api/generate", timeout=60,
                       json={"model": "smollm2:135m", "prompt": "hi", "format": fmt, "stream": False})
        assert r.status_code == 400 and words in r.json()["error"], r.text
