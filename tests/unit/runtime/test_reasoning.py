"""The reasoning splitter over token streams cut every way, and thinking detected from templates."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator

import pytest

from lokal.engine.sequence import Delta as EngineDelta
from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.events import Caller, Delta, Event, Finished, GenerationRecord
from lokal.runtime.pipeline import events
from lokal.runtime.reasoning import ReasoningSplitter, opens_thinking, supports_thinking, template_variables
from lokal.runtime.request import GenerateRequest, ToolUse
from lokal.runtime.tools import Tool


def split(pieces: list[str], inside: bool = False) -> tuple[str, str, list[tuple[str, str]]]:
    s = ReasoningSplitter(inside)
    out = [s.feed(p) for p in pieces]
    out.append(s.finish())
    return "".join(r for r, _ in out), "".join(a for _, a in out), out


def cuts(text: str, rng: random.Random) -> list[str]:
    """text in random pieces of 1 to 4 characters, as a tokenizer might cut it."""
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        out.append(text[i:i + n])
        i += n
    return out


CASES = [
    # (generated text, prompt opened <think>, reasoning, answer)
    ("<think>\nLet me add.\n</think>\n\nThe answer is 4.", False, "Let me add.", "The answer is 4."),
    ("Let me add.</think>The answer is 4.", True, "Let me add.", "The answer is 4."),
    ("\n Let me add.\n</think>\n4", True, "Let me add.", "4"),
    ("The answer is 4.", False, "", "The answer is 4."),
    ("  <think>hm</think>ok", False, "hm", "ok"),
    ("I think <think> is a tag.", False, "", "I think <think> is a tag."),
    ("still thinking, cut off by max_tokens  ", True, "still thinking, cut off by max_tokens", ""),
    ("<think>never closed", False, "never closed", ""),
    ("a < b </thin", True, "a < b </thin", ""),
    ("<thi", False, "", "<thi"),
    ("<think></think>", False, "", ""),
    ("x</think>y</think>z", True, "x", "y</think>z"),
]


@pytest.mark.parametrize(("text", "inside", "reasoning", "answer"), CASES)
def test_split_is_the_same_however_the_stream_is_cut(text: str, inside: bool, reasoning: str, answer: str) -> None:
    rng = random.Random(text)
    for pieces in ([text], list(text), *(cuts(text, rng) for _ in range(20))):
        got_reasoning, got_answer, _ = split(pieces, inside)
        assert (got_reasoning, got_answer) == (reasoning, answer), pieces


def test_no_piece_carries_a_tag_and_nothing_is_held_longer_than_a_tag() -> None:
    text = "<think>" + "step " * 30 + "</think>" + "done " * 30
    _, _, out = split(list(text))
    for reasoning, answer in out:
        assert "<" not in reasoning and "<" not in answer
    # Streaming is not held back: besides the tags, at most a tag's length is ever held.
    emitted = 0
    s = ReasoningSplitter()
    for i, ch in enumerate(text, 1):
        r, a = s.feed(ch)
        emitted += len(r) + len(a)
        assert emitted >= i - len("<think>") - len("</think>") - len("</think>") - 1  # and a space


def test_the_splitter_keeps_what_it_returned() -> None:
    s = ReasoningSplitter(inside=True)
    s.feed("why")
    s.feed("</think>because")
    s.finish()
    assert "".join(s.reasoning) == "why" and "".join(s.answer) == "because"


def test_thinking_is_read_from_the_template() -> None:
    assert supports_thinking("{% if enable_thinking is defined and not enable_thinking %}{{ x }}{% endif %}")
    assert supports_thinking("{{ '<|im_start|>assistant\\n<think>\\n' }}")
    assert not supports_thinking("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}")


def test_a_prompt_that_opens_a_think_block_is_seen() -> None:
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert opens_thinking("<think>\nI will start with")
    assert not opens_thinking("<|im_start|>assistant\n")
    assert not opens_thinking("<think>\n\n</think>\n\n")  # Qwen3 with thinking turned off


def test_template_variables_follow_the_request() -> None:
    assert template_variables(None, None) == {}
    assert template_variables(False, None) == {"enable_thinking": False}
    assert template_variables(True, "high") == {"enable_thinking": True, "reasoning_effort": "high"}


# ---- through the pipeline's events -----------------------------------------------------------

async def _pieces(texts: list[str]) -> AsyncGenerator[EngineDelta, None]:
    yield EngineDelta(started=True, usage=Usage(5, 0, 0))
    for i, t in enumerate(texts):
        yield EngineDelta(text=t, token_ids=(i,))
    yield EngineDelta(finish_reason=FinishReason.STOP, usage=Usage(5, len(texts)), timings=Timings(0.0, 0.0, 0.0, None))


async def _run(texts: list[str], req: GenerateRequest, think_open: bool | None) -> list[Event]:
    async def finish() -> None:
        return None

    record = GenerationRecord(model="m:latest", caller=Caller("test"))
    gen = events(None, req, [1, 2, 3], _pieces(texts), record, 0.0, lambda r, e: None, finish,  # type: ignore[arg-type]
                 think_open)
    return [e async for e in gen]


async def test_events_carry_reasoning_apart_from_the_answer() -> None:
    texts = ["I", " should", " greet", ".", "</th", "ink>", "\n\n", "Hello", "!"]
    seen = await _run(texts, GenerateRequest(model="m", messages=[]), think_open=True)
    deltas = [e for e in seen if isinstance(e, Delta)]
    assert "".join(d.reasoning for d in deltas) == "I should greet."
    assert "".join(d.text for d in deltas) == "Hello!"
    done = seen[-1]
    assert isinstance(done, Finished)
    assert (done.reasoning, done.content) == ("I should greet.", "Hello!")
    assert done.text == "".join(texts)  # the raw text keeps everything


async def test_a_model_that_does_not_think_keeps_its_text() -> None:
    texts = ["<think>", "x", "</think>", "y"]
    seen = await _run(texts, GenerateRequest(model="m", messages=[]), think_open=None)
    done = seen[-1]
    assert isinstance(done, Finished) and done.content == "<think>x</think>y" and done.reasoning == ""


async def test_a_tool_call_after_thinking_is_parsed_from_the_answer_only() -> None:
    tool = Tool("add", "", {"type": "object", "properties": {"a": {"type": "integer"}}})
    req = GenerateRequest(model="m", messages=[], tools=ToolUse((tool,), (tool,), parallel=False))
    texts = ['<tool_call>{"name": "add", "arguments": {"a": 0}}</tool_call>', "</think>",
             '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>',
             '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>']
    seen = await _run(texts, req, think_open=True)
    done = seen[-1]
    assert isinstance(done, Finished)
    # the call written while thinking is reasoning; parallel_tool_calls false keeps the first call
    assert [c.arguments for c in done.tool_calls] == [{"a": 1}]
    assert "tool_call" in done.reasoning and done.content == ""
