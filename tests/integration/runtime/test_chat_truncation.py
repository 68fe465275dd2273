"""An over-long chat with ``truncate`` (Ollama's /api/chat) loses its oldest turns, whole, and
keeps its system messages, tools and latest turn: checked on the real prompt's text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.runtime.errors import ContextLengthExceeded
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.pipeline import prepare
from lokal.runtime.request import GenerateRequest, ToolUse
from lokal.runtime.runtime import Runtime
from lokal.runtime.tools import parse_tools

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"
TOOLS = tuple(parse_tools([{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]))


@pytest.fixture
async def loaded(model_home: Path) -> AsyncIterator[tuple[Runtime, LoadedModel]]:
    rt = Runtime(Settings(home=model_home, parallel=1, ctx_size=512, keep_alive="-1", threads=2))
    yield rt, await rt.get(MODEL)
    await rt.close()


def history(turns: int) -> list[dict[str, object]]:
    msgs: list[dict[str, object]] = [{"role": "system", "content": "SYSTEM-RULE: be terse."}]
    for i in range(turns):
        msgs += [{"role": "user", "content": f"OLD-QUESTION-{i} " + "waves and tides " * 12},
                 {"role": "assistant", "content": "",
                  "tool_calls": [{"id": f"c{i}", "type": "function",
                                  "function": {"name": "get_weather", "arguments": {"city": f"City{i}"}}}]},
                 {"role": "tool", "content": f"TOOL-RESULT-{i}", "name": "get_weather"},
                 {"role": "assistant", "content": f"OLD-ANSWER-{i} " + "the sea is wide " * 10}]
    return [*msgs, {"role": "user", "content": "LATEST-QUESTION: and the sky?"}]


def prompt_text(model: LoadedModel, tokens: list[int]) -> str:
    return b"".join(model.model.token_text(t) for t in tokens).decode("utf-8", "replace")


async def test_oldest_whole_turns_go_first_and_the_rest_is_kept(loaded: tuple[Runtime, LoadedModel]) -> None:
    rt, model = loaded
    req = GenerateRequest(model=MODEL, messages=history(8), tools=ToolUse(TOOLS, TOOLS), truncate=True,
                          options={"max_tokens": 4})
    prepared = prepare(model, req, rt.settings)
    text = prompt_text(model, prepared.prompt)
    assert len(prepared.prompt) < 512
    assert prepared.dropped_messages > 0 and prepared.dropped_messages % 4 == 0  # turns of 4 messages
    kept_turns = 8 - prepared.dropped_messages // 4
    assert "SYSTEM-RULE" in text and "get_weather" in text and text.rstrip().endswith("assistant")
    assert "LATEST-QUESTION" in text
    for i in range(8):  # the newest turns stay, each whole; the oldest are gone, each whole
        present = [f"OLD-QUESTION-{i} " in text, f"TOOL-RESULT-{i}" in text, f"OLD-ANSWER-{i} " in text]
        assert present == [i >= 8 - kept_turns] * 3, (i, present)


async def test_without_truncate_or_when_nothing_can_go_it_is_refused(loaded: tuple[Runtime, LoadedModel]) -> None:
    rt, model = loaded
    with pytest.raises(ContextLengthExceeded):
        await rt.generate(GenerateRequest(model=MODEL, messages=history(8), options={"max_tokens": 4}))
    huge = [{"role": "system", "content": "x"}, {"role": "user", "content": "sea " * 2000}]
    with pytest.raises(ContextLengthExceeded):
        await rt.generate(GenerateRequest(model=MODEL, messages=huge, truncate=True, options={"max_tokens": 4}))
    fits = prepare(model, GenerateRequest(model=MODEL, messages=history(1), truncate=True), rt.settings)
    assert fits.dropped_messages == 0
