"""Fill-in-the-middle (``suffix``) with qwen2.5-coder's FIM tokens, and a thinking model's
reasoning split from its answer (``reasoning_content``, Ollama's ``thinking``), on the live server.

No thinking model is on PyPI here: the thinking model is smollm2 with a chat template whose
assistant turn opens ``<think>`` and a Modelfile example turn that thinks and answers, so its
output has a think block that is closed at temperature 0."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

CODER = "qwen2.5-coder:0.5b"
THINKER = "h6-test-thinker:latest"
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"
THINK_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                  "<|im_start|>assistant\n<think>\n")
EXAMPLE = [{"role": "user", "content": "What is 2+2?"},
           {"role": "assistant", "content": "<think>\nTwo plus two is four.\n</think>\nThe answer is 4."}]
ASK = [{"role": "user", "content": "What is 3+3?"}]


@pytest.fixture(scope="session")
def coder(model_home: Path) -> str:
    """qwen2.5-coder pulled into the test home (one download, shared with every test that needs it)."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), CODER)
    return CODER


@pytest.fixture(scope="module")
def thinker(server: LiveServer) -> Iterator[str]:
    body = {"model": THINKER, "from": "smollm2:135m", "template": THINK_TEMPLATE, "messages": EXAMPLE, "stream": False}
    r = httpx.post(server.url + "/api/create", json=body, timeout=120)
    assert r.status_code == 200, r.text
    yield THINKER
    httpx.request("DELETE", server.url + "/api/delete", json={"model": THINKER}, timeout=30)


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120)


def token_ids(server: LiveServer, model: str, text: str, parse_special: bool = False) -> list[int]:
    r = httpx.post(server.url + "/tokenize", json={"model": model, "content": text, "parse_special": parse_special})
    assert r.status_code == 200, r.text
    return list(r.json()["tokens"])


# ---- fill-in-the-middle ----------------------------------------------------------------------

def test_completions_suffix_fills_the_middle_with_the_fim_tokens(client: openai.OpenAI, server: LiveServer,
                                                                 coder: str) -> None:
    r = client.completions.create(model=coder, prompt=PREFIX, suffix=SUFFIX, max_tokens=24, temperature=0)
    middle = r.choices[0].text
    assert middle.strip(), "an empty middle"
    assert "<|fim" not in middle and SUFFIX.strip() not in middle[:3]
    # The prompt read was FIM_PRE prefix FIM_SUF suffix FIM_MID, not the text with a template.
    expected = 3 + len(token_ids(server, coder, PREFIX)) + len(token_ids(server, coder, SUFFIX))
    assert r.usage is not None and r.usage.prompt_tokens == expected


def test_ollama_generate_suffix_reads_the_fim_layout(server: LiveServer, coder: str) -> None:
    body = {"model": coder, "prompt": PREFIX, "suffix": SUFFIX, "stream": False,
            "options": {"temperature": 0, "num_predict": 24}}
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["response"].strip()
    pre, suf, mid = (token_ids(server, coder, t, parse_special=True)
                     for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    assert len(pre) == len(suf) == len(mid) == 1  # each one special token
    prefix, suffix = token_ids(server, coder, PREFIX), token_ids(server, coder, SUFFIX)
    layout = pre + prefix + suf + suffix + mid
    assert out["context"][: len(layout)] == layout
    assert out["prompt_eval_count"] == len(layout)


def test_suffix_for_a_model_without_fim_tokens_is_a_400(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smollm2:135m", prompt=PREFIX, suffix=SUFFIX, max_tokens=8)
    assert "does not support insert" in str(info.value) and "fill-in-the-middle" in str(info.value)
    r = httpx.post(server.url + "/api/generate", json={"model": "smollm2:135m", "prompt": PREFIX, "suffix": SUFFIX,
                                                       "stream": False})
    assert r.status_code == 400 and "does not support insert" in r.json()["error"]


# ---- thinking --------------------------------------------------------------------------------

def test_chat_reasoning_content_is_split_from_the_answer(client: openai.OpenAI, thinker: str) -> None:
    r = client.chat.completions.create(model=thinker, messages=ASK, max_tokens=60, temperature=0)  # type: ignore[arg-type]
    message = r.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert isinstance(reasoning, str) and reasoning.strip()
    assert message.content and message.content.strip()
    for part in (reasoning, message.content):
        assert "<think>" not in part and "</think>" not in part
    # Streamed, the same split arrives in deltas: reasoning first, then the answer.
    chunks = list(client.chat.completions.create(model=thinker, messages=ASK, max_tokens=60, temperature=0,  # type: ignore[arg-type]
                                                 stream=True))
    kinds = []
    streamed = {"reasoning_content": "", "content": ""}
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta.model_dump()
        for key in streamed:
            if delta.get(key):
                streamed[key] += delta[key]
                kinds.append(key)
    assert streamed == {"reasoning_content": reasoning, "content": message.content}
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # no reasoning after the answer began


def test_ollama_think_gives_thinking_and_think_false_hides_it(server: LiveServer, thinker: str) -> None:
    opts = {"temperature": 0, "num_predict": 60}
    chat = httpx.post(server.url + "/api/chat", json={"model": thinker, "messages": ASK, "think": True,
                                                      "stream": False, "options": opts}, timeout=120).json()
    thinking, content = chat["message"].get("thinking", ""), chat["message"]["content"]
    assert thinking.strip() and content.strip() and "think>" not in thinking + content
    gen = httpx.post(server.url + "/api/generate", json={"model": thinker, "prompt": ASK[0]["content"], "think": "high",
                                                         "stream": False, "options": opts}, timeout=120).json()
    assert (gen["thinking"], gen["response"]) == (thinking, content)  # the same prompt, the same split
    # Streamed NDJSON carries the same pieces.
    lines = []
    with httpx.stream("POST", server.url + "/api/generate", json={"model": thinker, "prompt": ASK[0]["content"],
                                                                  "think": True, "options": opts}, timeout=120) as s:
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert "".join(x.get("thinking", "") for x in lines) == thinking
    assert "".join(x["response"] for x in lines) == content
    off = httpx.post(server.url + "/api/chat", json={"model": thinker, "messages": ASK, "think": False,
                                                     "stream": False, "options": opts}, timeout=120).json()
    assert "thinking" not in off["message"] and "think>" not in off["message"]["content"]


def test_think_for_a_model_that_cannot_think_is_ollamas_400(server: LiveServer) -> None:
    for route, body in (("/api/chat", {"messages": ASK}), ("/api/generate", {"prompt": "hi"})):
        r = httpx.post(server.url + route, json={"model": "smollm2:135m", "think": True, "stream": False, **body})
        assert r.status_code == 400 and r.json()["error"] == '"smollm2:135m" does not support thinking'
    r = httpx.post(server.url + "/api/chat", json={"model": "smollm2:135m", "messages": ASK, "think": "extreme"})
    assert r.status_code == 400 and "think" in r.json()["error"]


def test_reasoning_effort_is_accepted_and_a_model_that_does_not_think_ignores_it(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2:135m", messages=ASK, max_tokens=4,  # type: ignore[arg-type]
                                       reasoning_effort="high")
    assert r.choices[0].message.content is not None
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2:135m", messages=ASK, max_tokens=4,  # type: ignore[arg-type]
                                       reasoning_effort="extreme")  # type: ignore[arg-type]
