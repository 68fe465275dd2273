"""``/tokenize`` and ``/detokenize`` in llama.cpp's and vLLM's shapes, and ``/v1/rerank`` from
embedding similarity, on the live server with smollm2."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
TEXT = "Hello world, ça va? 東京"


def post(server: LiveServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def test_llama_cpp_tokenize_round_trips_through_detokenize(server: LiveServer) -> None:
    r = post(server, "/tokenize", {"content": TEXT})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"tokens"}
    ids = r.json()["tokens"]
    assert all(isinstance(t, int) for t in ids) and len(ids) > 5
    back = post(server, "/detokenize", {"tokens": ids}).json()
    assert back == {"content": TEXT, "prompt": TEXT}


def test_with_pieces_gives_each_tokens_text_or_bytes(server: LiveServer) -> None:
    pieces = post(server, "/tokenize", {"content": TEXT, "with_pieces": True}).json()["tokens"]
    ids = post(server, "/tokenize", {"content": TEXT}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw.decode() == TEXT  # a multi-byte character split across tokens comes as bytes


def test_special_tokens_are_parsed_unless_asked_not_to(server: LiveServer) -> None:
    parsed = post(server, "/tokenize", {"content": "<|im_end|>"}).json()["tokens"]
    literal = post(server, "/tokenize", {"content": "<|im_end|>", "parse_special": False}).json()["tokens"]
    assert len(parsed) == 1 and len(literal) > 1
    assert post(server, "/detokenize", {"tokens": parsed}).json()["content"] == "<|im_end|>"


def test_vllm_shapes_count_the_prompt_and_the_rendered_chat(server: LiveServer) -> None:
    r = post(server, "/tokenize", {"model": MODEL, "prompt": TEXT, "return_token_strs": True}).json()
    assert r["count"] == len(r["tokens"]) == len(r["token_strs"])
    assert r["max_model_len"] == 1024  # the server's --ctx-size
    assert r["tokens"] == post(server, "/tokenize", {"content": TEXT}).json()["tokens"]  # smollm2 adds no BOS
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    chat = post(server, "/tokenize", {"model": MODEL, "messages": messages}).json()
    # The same count the chat endpoint reads for these messages.
    done = openai.OpenAI(base_url=server.url + "/v1", api_key="x").chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert done.usage is not None and chat["count"] == done.usage.prompt_tokens
    text = post(server, "/detokenize", {"model": MODEL, "tokens": chat["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\n") and "Name a colour." in text
    no_prompt = post(server, "/tokenize", {"model": MODEL, "messages": messages, "add_generation_prompt": False})
    assert no_prompt.json()["count"] < chat["count"]


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/tokenize", {}, 400),
    ("/tokenize", {"content": "a", "prompt": "b"}, 400),
    ("/tokenize", {"content": 5}, 400),
    ("/tokenize", {"messages": []}, 400),
    ("/tokenize", {"model": "no-such-model:1b", "content": "a"}, 404),
    ("/detokenize", {"tokens": [10**9]}, 400),
    ("/detokenize", {"tokens": [-1]}, 400),
    ("/detokenize", {"tokens": "abc"}, 400),
    ("/detokenize", {"model": "no-such-model:1b", "tokens": [1]}, 404),
])
def test_bad_token_requests_are_4xx_in_openais_shape(server: LiveServer, path: str, body: object,
                                                     status: int) -> None:
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_rerank_orders_documents_by_embedding_similarity(server: LiveServer) -> None:
    query = "What is the capital of France?"
    docs = ["Bananas are a yellow fruit.", "Paris is the capital of France.", "The stock market fell today."]
    body = {"model": MODEL, "query": query, "documents": [docs[0], {"text": docs[1]}, docs[2]],
            "top_n": 2, "return_documents": True}
    r = post(server, "/v1/rerank", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "smollm2:135m (embedding similarity, not a cross-encoder)"
    results = out["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(res["document"]["text"] == docs[res["index"]] for res in results)
    assert out["usage"]["prompt_tokens"] > 0
    # The scores are the cosine similarities /v1/embeddings gives (one text per request).
    embed = openai.OpenAI(base_url=server.url + "/v1", api_key="x").embeddings
    vectors = [embed.create(model=MODEL, input=t).data[0].embedding for t in [query, *docs]]
    expected = sorted(((cosine(vectors[0], v), i) for i, v in enumerate(vectors[1:])), reverse=True)[:2]
    assert [res["index"] for res in results] == [i for _, i in expected]
    for res, (score, _) in zip(results, expected, strict=True):
        assert res["relevance_score"] == pytest.approx(score, abs=5e-3)
    # /rerank is the same route; without return_documents there are no documents.
    plain = post(server, "/rerank", {"model": MODEL, "query": query, "documents": docs}).json()
    assert len(plain["results"]) == 3 and "document" not in plain["results"][0]


@pytest.mark.parametrize(("body", "status"), [
    ({"model": MODEL, "query": "q", "documents": []}, 400),
    ({"model": MODEL, "query": "", "documents": ["a"]}, 400),
    ({"model": MODEL, "query": "q", "documents": ["a", ""]}, 400),
    ({"model": MODEL, "query": "q", "documents": ["a"], "top_n": 0}, 400),
    ({"model": MODEL, "query": "q", "documents": [{"txt": "a"}]}, 400),
    ({"model": "no-such-model:1b", "query": "q", "documents": ["a"]}, 404),
])
def test_bad_rerank_requests_are_4xx(server: LiveServer, body: object, status: int) -> None:
    r = post(server, "/v1/rerank", body)
    assert r.status_code == status, r.text


def test_the_new_routes_are_in_the_openapi_schema_with_typed_bodies(server: LiveServer) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in ("/tokenize", "/detokenize", "/v1/rerank"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/")
