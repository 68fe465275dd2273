"""Bodies without a JSON content type are read as JSON on every API route (as Ollama and
llama-server do), and /api/push is refused in Ollama's error shape: an app without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lokal.app import create_app
from lokal.config import Settings
from lokal.server.json_body import JsonBodyMiddleware

CHAT = {"model": "nope:latest", "messages": [{"role": "user", "content": "hi"}], "stream": False}
GENERATE = {"model": "nope:latest", "prompt": "hi", "stream": False}
OPENAI_CHAT = {"model": "nope:latest", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# What curl -d, litellm's ollama providers and a bare fetch() send.
CARELESS = [None, "application/x-www-form-urlencoded", "text/plain", "text/plain; charset=utf-8"]


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path, audit_log=False)))


def post(client: TestClient, path: str, body: dict[str, object], content_type: str | None):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(path, content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize("content_type", CARELESS)
@pytest.mark.parametrize(("path", "body"), [("/api/chat", CHAT), ("/api/generate", GENERATE),
                                            ("/api/show", {"model": "nope:latest"})])
def test_ollama_routes_read_the_body_as_json_whatever_its_content_type(
        client: TestClient, path: str, body: dict[str, object], content_type: str | None) -> None:
    r = post(client, path, body, content_type)
    # The body was understood: the model is unknown (404), not "Input should be a valid dictionary".
    assert r.status_code == 404, r.text
    assert "not found" in r.json()["error"]


@pytest.mark.parametrize("content_type", CARELESS)
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", OPENAI_CHAT),
    ("/v1/completions", {"model": "nope:latest", "prompt": "hi", "max_tokens": 4}),
    ("/v1/embeddings", {"model": "nope:latest", "input": "hi"}),
])
def test_openai_routes_read_the_body_as_json_whatever_its_content_type(
        client: TestClient, path: str, body: dict[str, object], content_type: str | None) -> None:
    r = post(client, path, body, content_type)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "model"


def test_a_body_that_is_not_json_is_still_a_400_in_the_apis_shape(client: TestClient) -> None:
    r = client.post("/api/chat", content=b"model=x&prompt=y",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = client.post("/v1/chat/completions", content=b"not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def _echo_app() -> JsonBodyMiddleware:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"content_type": request.headers.get("content-type"), "size": len(await request.body())})

    return JsonBodyMiddleware(Starlette(routes=[Route("/x", echo, methods=["POST", "GET"])]))


def test_multipart_octet_stream_and_json_variants_pass_untouched() -> None:
    client = TestClient(_echo_app())
    r = client.post("/x", files={"file": ("a.txt", b"hello")})
    assert r.json()["content_type"].startswith("multipart/form-data; boundary=")
    r = client.post("/x", content=b"\x00\x01", headers={"Content-Type": "application/octet-stream"})
    assert r.json() == {"content_type": "application/octet-stream", "size": 2}
    r = client.post("/x", content=b"{}", headers={"Content-Type": "application/vnd.api+json"})
    assert r.json()["content_type"] == "application/vnd.api+json"
    assert client.post("/x", content=b"{}").json()["content_type"] == "application/json"
    assert client.get("/x").json()["content_type"] is None  # no body, nothing relabelled


def test_push_is_refused_with_ollamas_error_shape_not_a_404(client: TestClient) -> None:
    r = client.post("/api/push", json={"model": "smollm2:135m"})
    assert r.status_code == 400
    assert "pushing models is not supported" in r.json()["error"]
    r = client.post("/api/push", content=b'{"name": "me/model:latest", "stream": true}')  # legacy name, no type
    assert r.status_code == 400 and "me/model:latest" in r.json()["error"]
    assert client.post("/api/push", json={}).status_code == 400  # no model at all: still a 400


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/messages", {"model": "nope:latest", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", {"model": "nope:latest", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/responses", {"model": "nope:latest", "input": "hi"}),
    ("/tokenize", {"model": "nope:latest", "content": "hi"}),
    ("/v1/rerank", {"model": "nope:latest", "query": "a", "documents": ["b"]}),
    ("/api/embed", {"model": "nope:latest", "input": "hi"}),
])
def test_every_other_json_route_answers_a_form_typed_body_as_it_answers_json(
        client: TestClient, path: str, body: dict[str, object]) -> None:
    as_json = post(client, path, body, "application/json")
    for content_type in CARELESS:
        r = post(client, path, body, content_type)
        assert (r.status_code, r.json()) == (as_json.status_code, as_json.json()), content_type
