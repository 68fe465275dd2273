"""Keys made with `lokal keys create` guard the OpenAI and Ollama routes of a live server, used
through the official clients; 429 with Retry-After past the per-key rate."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from tests.integration.security.conftest import MODEL, RATE_RPM, SecuredServer, lokal_cli

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "Say hi"}]


def test_openai_client_with_the_key_works_and_without_it_is_refused(secured: SecuredServer) -> None:
    good = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=secured.keys["alice"], max_retries=0)
    reply = good.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    assert [m.id for m in good.models.list()] == [MODEL]
    bad = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="lokal-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
    assert exc.value.status_code == 401
    assert exc.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_ollama_client_sends_the_same_bearer_key(secured: SecuredServer) -> None:
    good = ollama.Client(host=secured.url, headers={"Authorization": f"Bearer {secured.keys['alice']}"}, timeout=120)
    reply = good.chat(model=MODEL, messages=CHAT, options={"num_predict": 4, "temperature": 0})
    assert reply.eval_count and reply.eval_count >= 1
    assert [m.model for m in good.list().models] == [MODEL]
    for client in (ollama.Client(host=secured.url, timeout=30),
                   ollama.Client(host=secured.url, headers={"Authorization": "Bearer nope"}, timeout=30)):
        with pytest.raises(ollama.ResponseError) as exc:
            client.chat(model=MODEL, messages=CHAT, options={"num_predict": 4})
        assert exc.value.status_code == 401
        assert "API key" in exc.value.error


def test_streams_need_the_key_too(secured: SecuredServer) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": True, "max_tokens": 4}
    r = httpx.post(f"{secured.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{secured.url}/api/generate", json={"model": MODEL, "prompt": "hi"}, timeout=60)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    assert httpx.get(f"{secured.url}/health").status_code == 200
    assert httpx.get(f"{secured.url}/ready").json()["status"] == "ready"


def test_a_revoked_key_is_refused_at_once_without_a_restart(secured: SecuredServer) -> None:
    headers = {"Authorization": f"Bearer {secured.keys['doomed']}"}
    assert httpx.get(f"{secured.url}/api/tags", headers=headers).status_code == 200
    done = lokal_cli(secured.home, "keys", "revoke", "doomed")
    assert done.returncode == 0, done.stderr
    assert httpx.get(f"{secured.url}/api/tags", headers=headers).status_code == 401
    listed = lokal_cli(secured.home, "keys", "list").stdout
    assert "alice" in listed and "doomed" not in listed
    assert secured.keys["alice"] not in listed and secured.keys["alice"] not in (secured.home / "keys.json").read_text()


def test_requests_past_the_per_key_rate_get_429_with_retry_after(secured: SecuredServer) -> None:
    headers = {"Authorization": f"Bearer {secured.keys['burst']}"}
    statuses = [httpx.get(f"{secured.url}/v1/models", headers=headers).status_code for _ in range(RATE_RPM)]
    assert statuses == [200] * RATE_RPM
    r = httpx.get(f"{secured.url}/v1/models", headers=headers)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    client = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=secured.keys["burst"], max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    with pytest.raises(ollama.ResponseError) as exc:
        ollama.Client(host=secured.url, headers=headers).list()
    assert exc.value.status_code == 429
    # another key is not affected
    other = {"Authorization": f"Bearer {secured.keys['alice']}"}
    assert httpx.get(f"{secured.url}/v1/models", headers=other).status_code == 200


def test_a_server_without_keys_needs_none(server) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0)
    assert MODEL in [m.id for m in client.models.list()]
    assert ollama.Client(host=server.url).list().models
