"""A model's thinking, split from its answer as it streams.

Models such as Qwen3 and DeepSeek-R1 write their reasoning between ``<think>`` and ``</think>``
before the answer; their chat templates either let the model open the tag itself or open it in
the generation prompt (the assistant turn starts inside it). ``ReasoningSplitter`` reads the
generated text in any pieces and returns (reasoning, answer) pieces, holding back only text that
may be the start of a tag. Whether a model thinks is read from its chat template."""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EFFORTS = ("low", "medium", "high")

# A template that writes think tags, or takes the switch Qwen3's templates read.
_THINKING_TEMPLATE = re.compile(r"<think>|\benable_thinking\b|\breasoning_effort\b")


def supports_thinking(template_source: str) -> bool:
    """Whether a chat template is a thinking model's (it mentions ``<think>`` or ``enable_thinking``)."""
    return _THINKING_TEMPLATE.search(template_source) is not None


def opens_thinking(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside a think block (the template opened it for the model)."""
    tail = prompt_text.rstrip()
    return tail.endswith(THINK_OPEN) or tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)


def template_variables(think: bool | None, effort: str | None) -> dict[str, object]:
    """What a thinking template reads: ``enable_thinking`` (Qwen3's switch) and
    ``reasoning_effort`` (gpt-oss's), for a request's ``think`` / ``reasoning_effort``."""
    out: dict[str, object] = {}
    if think is not None:
        out["enable_thinking"] = think
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


class ReasoningSplitter:
    """Splits generated text into reasoning and answer. ``inside``: the prompt opened the think
    block, so the text starts as reasoning; otherwise a ``<think>`` may open it, before any answer
    text. Whitespace around the reasoning and at the start of the answer is dropped."""

    def __init__(self, inside: bool = False) -> None:
        self._state = "reasoning" if inside else "start"
        self._held = ""
        self._trim = inside  # drop whitespace at the start of the part now being written
        self.reasoning: list[str] = []
        self.answer: list[str] = []

    def feed(self, text: str) -> tuple[str, str]:
        """(new reasoning, new answer) after ``text``."""
        self._held += text
        thought, said = "", ""
        while True:
            if self._state == "start":
                lead = self._held.lstrip()
                if lead.startswith(THINK_OPEN):
                    self._held, self._state, self._trim = lead[len(THINK_OPEN):], "reasoning", True
                    continue
                if not lead or THINK_OPEN.startswith(lead):
                    break  # may still become <think>
                self._state = "answer"
                continue
            if self._state == "reasoning":
                at = self._held.find(THINK_CLOSE)
                if at >= 0:
                    thought += self._take(self._held[:at].rstrip())
                    self._held, self._state, self._trim = self._held[at + len(THINK_CLOSE):], "answer", True
                    continue
                keep = _partial_suffix(self._held, THINK_CLOSE)
                body = self._held[: len(self._held) - keep]
                keep += len(body) - len(body.rstrip())  # whitespace may be the last before </think>
                thought += self._take(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep:]
                break
            said += self._take(self._held)  # the answer: everything after the think block
            self._held = ""
            break
        self.reasoning.append(thought)
        self.answer.append(said)
        return thought, said

    def finish(self) -> tuple[str, str]:
        """What was held back, once generation has ended: an unclosed think block is all reasoning,
        a lone partial tag is answer text."""
        rest, self._held = self._held, ""
        if self._state == "reasoning":
            out = (self._take(rest.rstrip()), "")
        else:
            out = ("", self._take(rest) if self._state == "answer" else rest)
        self.reasoning.append(out[0])
        self.answer.append(out[1])
        return out

    def _take(self, text: str) -> str:
        if self._trim:
            text = text.lstrip()
            self._trim = not text
        return text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
