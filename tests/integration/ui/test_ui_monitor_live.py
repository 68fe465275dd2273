"""A lone surrogate ("\\ud800": valid JSON, not UTF-8) against a live `lokal serve` with a model: the
generation request is refused with 400 and the monitor (fed by the runtime's events,
lokal.ui.request_log) keeps answering 200, after it and after the normal generations that follow;
the UI's conversations store it as U+FFFD and keep listing."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import LiveServer

MODEL = "smollm2:135m"
LONE = '"\\ud800"'
JSON = {"content-type": "application/json"}


def monitor(server: LiveServer) -> dict[str, object]:
    response = httpx.get(server.url + "/ui/api/monitor", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", '{"model": @, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'),
    ("/v1/completions", '{"model": @, "prompt": "hi", "max_tokens": 4}'),
    ("/api/generate", '{"model": @, "prompt": "hi", "stream": false, "options": {"num_predict": 4}}'),
    ("/api/chat", '{"model": @, "messages": [{"role": "user", "content": "hi"}], "stream": false}'),
    ("/v1/embeddings", '{"model": @, "input": "hi"}'),
])
def test_a_lone_surrogate_in_the_model_gets_400_and_the_monitor_keeps_answering(
    server: LiveServer, path: str, body: str
) -> None:
    before = monitor(server)["requests_total"]
    refused = httpx.post(server.url + path, content=body.replace("@", LONE), headers=JSON, timeout=60)
    assert refused.status_code == 400, refused.text
    monitor(server)
    for i in range(3):  # the old request log answered 500 for the next 49 generations
        done = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 2}."}], "max_tokens": 4})
        assert done.status_code == 200, done.text
        snapshot = monitor(server)
    assert isinstance(before, int) and snapshot["requests_total"] == before + 3
    recent = snapshot["recent_requests"]
    assert isinstance(recent, list) and recent[-1]["model"] == MODEL and recent[-1]["status"] == "length"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": @}], "max_tokens": 4}'),
    ("/api/chat", '{"model": "%s", "messages": [{"role": "user", "content": @}], "stream": false,'
                  ' "options": {"num_predict": 4}}'),
    ("/api/generate", '{"model": "%s", "prompt": @, "stream": false, "options": {"num_predict": 4}}'),
])
def test_a_lone_surrogate_in_a_prompt_for_a_real_model_is_no_500(server: LiveServer, path: str, body: str) -> None:
    response = httpx.post(server.url + path, content=body.replace("%s", MODEL).replace("@", LONE), headers=JSON,
                          timeout=120)
    assert response.status_code < 500, response.text
    monitor(server)


def test_a_ui_conversation_with_a_lone_surrogate_is_kept_and_listed(server: LiveServer) -> None:
    created = httpx.post(server.url + "/ui/api/conversations", headers=JSON, timeout=10,
                         content='{"title": "t\\ud800", "system_prompt": ' + LONE + "}")
    assert created.status_code == 201, created.text
    conversation_id = created.json()["id"]
    message = httpx.post(f"{server.url}/ui/api/conversations/{conversation_id}/messages", headers=JSON, timeout=10,
                         content='{"role": "user", "content": ' + LONE + "}")
    assert message.status_code == 201, message.text
    listed = httpx.get(server.url + "/ui/api/conversations", timeout=10)
    assert listed.status_code == 200
    assert {"id": conversation_id, "title": "t\ufffd"}.items() <= next(
        c for c in listed.json() if c["id"] == conversation_id).items()
    got = httpx.get(f"{server.url}/ui/api/conversations/{conversation_id}", timeout=10).json()
    assert got["messages"][0]["content"] == "\ufffd"
    assert httpx.delete(f"{server.url}/ui/api/conversations/{conversation_id}", timeout=10).status_code == 204
