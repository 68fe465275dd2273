"""Schemathesis against lokal's own OpenAPI schema: generated bodies (wrong types, huge numbers,
odd strings, absurd sampling values) never get a 5xx.

Excluded, because they change or fetch models rather than serve them: /api/pull (downloads),
/api/create, /api/copy, /api/delete, POST /api/blobs/{digest}. Generations are bounded by the
server's own LOKAL_MAX_TOKENS_LIMIT (8) and LOKAL_REQUEST_TIMEOUT, so no case streams for long.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import MODEL
from tests.integration.server.test_ollama_api import own_home

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("LOKAL_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = own_home(model_home, tmp_path_factory.mktemp("fuzz-home"))
    live = LiveServer(home, "--model", MODEL, "--parallel", "2", "--ctx-size", "512", "--keep-alive", "-1",
                      env={"LOKAL_MAX_TOKENS_LIMIT": "8", "LOKAL_REQUEST_TIMEOUT": "20"})
    yield live
    live.stop()


def operations(url: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema = schema.exclude(path_regex=r"^/api/(pull|create|copy|delete)$")
    schema = schema.exclude(path_regex=r"^/api/blobs/", method="POST")
    return [result.ok() for result in schema.get_all_operations()]


def with_real_model(case: schemathesis.Case) -> schemathesis.Case:
    """Most random model names are a quick 404: aim most cases at the loaded model so that the
    rest of the body (messages, options, sampling values) reaches the engine."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = MODEL
    return case


def cases(op: schemathesis.APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    positive = op.as_strategy(GenerationMode.POSITIVE)
    negative = op.as_strategy(GenerationMode.NEGATIVE)
    return st.one_of(positive.map(with_real_model), negative.map(with_real_model), positive, negative)


def test_no_generated_request_gets_a_server_error(fuzz_server: LiveServer) -> None:
    """Each operation gets EXAMPLES generated cases (hypothesis, derandomized: the same cases
    every run). The schemathesis pytest plugin does not run under pytest 9, so the cases are
    drawn here from each operation's strategy."""
    failures: list[str] = []
    statuses: dict[str, int] = {}
    ops = operations(fuzz_server.url)
    assert len(ops) >= 15
    for op in ops:

        @given(case=cases(op))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=fuzz_server.url, timeout=60)
            statuses[f"{case.operation.label} {response.status_code}"] = \
                statuses.get(f"{case.operation.label} {response.status_code}", 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.operation.label} -> {response.status_code}: "
                                f"{response.text[:300]}\n  body: {str(case.body)[:300]}")

        run()
    print(f"{sum(statuses.values())} requests:", statuses)
    assert not failures, "\n".join(failures[:20])
    assert sum(statuses.values()) >= len(ops) * min(EXAMPLES, 5)


DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE_BODIES: list[tuple[str, str, bytes]] = [
    ("/v1/chat/completions", "invalid UTF-8",
     b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    ("/api/chat", "invalid UTF-8", b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "\xc3\x28"}]}'),
    ("/v1/chat/completions", "deep nesting", f'{{"model": "{MODEL}", "messages": {DEEP}}}'.encode()),
    ("/api/generate", "deep nesting", f'{{"model": "{MODEL}", "prompt": "hi", "options": {DEEP}}}'.encode()),
    ("/v1/chat/completions", "huge number", f'{{"model": "{MODEL}", "max_tokens": 1{"0" * 5000}, '
                                             '"messages": [{"role": "user", "content": "hi"}]}'.encode()),
    ("/api/generate", "huge number", f'{{"model": "{MODEL}", "prompt": "hi", "options": {{"seed": 1{"0" * 400}}}}}'
                                     .encode()),
    ("/v1/chat/completions", "NaN temperature", f'{{"model": "{MODEL}", "temperature": NaN, '
                                                '"messages": [{"role": "user", "content": "hi"}]}'.encode()),
    ("/api/generate", "absurd options", f'{{"model": "{MODEL}", "prompt": "hi", "options": {{"temperature": 1e308, '
                                        '"top_k": -5, "top_p": 7, "repeat_penalty": -1e300, "num_ctx": -1, '
                                        '"num_predict": 99999999999}}}}'.encode()),
    ("/api/chat", "wrong types", b'{"model": 7, "messages": "hi", "stream": "yes", "options": []}'),
    ("/v1/completions", "wrong types", b'{"model": "smollm2:135m", "prompt": {"a": 1}, "max_tokens": "many"}'),
    ("/api/show", "path in model name", b'{"model": "../../../../etc/passwd"}'),
    ("/v1/messages", "deep nesting", f'{{"model": "{MODEL}", "max_tokens": 4, "messages": {DEEP}}}'.encode()),
    ("/v1/messages", "invalid UTF-8", b'{"model": "smollm2:135m", "max_tokens": 4, '
                                      b'"messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    ("/v1/responses", "deep nesting", f'{{"model": "{MODEL}", "input": {DEEP}}}'.encode()),
    ("/v1/responses", "wrong types", b'{"model": "smollm2:135m", "input": 7, "tools": "all", "store": "maybe"}'),
    ("/tokenize", "deep nesting", f'{{"model": "{MODEL}", "messages": {DEEP}}}'.encode()),
    ("/v1/rerank", "wrong types", b'{"model": "smollm2:135m", "query": ["a"], "documents": "b", "top_n": -1}'),
    ("/api/generate", "template override", b'{"model": "smollm2:135m", "prompt": "hi", '
                                          b'"template": "{{ cycler.__init__.__globals__.os.popen(\'id\').read() }}"}'),
]


@pytest.mark.parametrize(("path", "what", "body"), HOSTILE_BODIES, ids=[f"{p} {w}" for p, w, _ in HOSTILE_BODIES])
def test_hostile_bodies_get_a_clear_4xx_or_a_bounded_answer(fuzz_server: LiveServer, path: str, what: str,
                                                            body: bytes) -> None:
    r = httpx.post(f"{fuzz_server.url}{path}", content=body, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code < 500, r.text[:500]
    if r.status_code >= 400:
        error = r.json()["error"]
        message = error if path.startswith("/api/") else error["message"]
        assert isinstance(message, str) and message
    assert "uid=" not in r.text
    assert httpx.get(f"{fuzz_server.url}/health", timeout=10).status_code == 200
