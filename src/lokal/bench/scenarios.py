"""What is asked: named presets, the built-in prompt set with controlled lengths, user JSONL prompts."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

TOPICS = [
    "a lighthouse keeper", "the history of tea", "how bridges stay up", "a robot learning to paint",
    "the water cycle", "a city under the sea", "why the sky is blue", "a chess tournament",
    "volcanoes", "a long train journey", "how bees make honey", "the first day at a new school",
    "a lost dog finding home", "the invention of paper", "life on Mars", "a baker at dawn",
    "the northern lights", "an old clock shop", "how rainbows form", "a mountain rescue",
    "the silk road", "a storm at sea", "how computers add numbers", "a garden in winter",
    "the moon landing", "a market in Marrakesh", "how vaccines work", "a library at midnight",
    "the migration of whales", "a violin maker", "how glaciers move", "a desert caravan",
]


@dataclass
class Prompt:
    messages: list[dict[str, str]]


@dataclass
class Scenario:
    """A named preset: which concurrency levels, how many requests per client, which prompts."""

    name: str
    concurrency: list[int]
    rounds: int  # requests per client at each level
    prompt_tokens: int = 0  # > 0: user prompts padded to about this many tokens
    shared_prefix_tokens: int = 0  # > 0: every request starts with the same system prompt of this size
    prefix_check: bool = False  # also measure cold vs warm TTFT of a repeated system prompt
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def rounds_at(self, concurrency: int) -> int:
        """Requests per client at a level; one client sends at least 3, so its percentiles mean something."""
        return max(self.rounds, 3) if concurrency == 1 else self.rounds


SCENARIOS: dict[str, str] = {
    "single": "one user: TTFT, decode tok/s, prompt tok/s, end-to-end latency (c=1)",
    "sweep": "concurrency sweep (--concurrency, default 1,10,100): req/s, aggregate tok/s, latency percentiles",
    "long-prompt": "one user with a long prompt (--prompt-tokens, default 1500): prompt processing speed",
    "shared-prefix": "every request shares one system prompt (--prefix-tokens): the prefix cache's effect",
    "all": "single, sweep and the cold/warm prefix check",
}


def make_scenario(
    name: str, concurrency: list[int] | None = None, rounds: int | None = None, prompt_tokens: int = 1500,
    prefix_tokens: int = 1500,
) -> Scenario:
    """The preset `name`, with the user's overrides."""
    if name == "single":
        return Scenario(name, concurrency or [1], rounds or 5, description=SCENARIOS[name])
    if name == "sweep":
        return Scenario(name, concurrency or [1, 10, 100], rounds or 2, description=SCENARIOS[name])
    if name == "long-prompt":
        return Scenario(name, concurrency or [1], rounds or 3, prompt_tokens=prompt_tokens, description=SCENARIOS[name])
    if name == "shared-prefix":
        return Scenario(name, concurrency or [1, 4], rounds or 2, shared_prefix_tokens=prefix_tokens,
                        prefix_check=True, description=SCENARIOS[name])
    if name == "all":
        return Scenario(name, concurrency or [1, 10, 100], rounds or 2, prefix_check=True, description=SCENARIOS[name])
    raise ValueError(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")


def filler(n_tokens: int, salt: int = 0) -> str:
    """About n_tokens of varied, non-repeating English (≈ 0.75 words a token for common tokenizers)."""
    words: list[str] = []
    i = 0
    while len(words) < int(n_tokens * 0.75):
        t = TOPICS[(i + salt) % len(TOPICS)]
        words += f"Rule {i}: when asked about {t}, answer with care and cite section {i * 7 % 101}.".split()
        i += 1
    return " ".join(words)


def system_prompt(n_tokens: int, salt: int) -> str:
    """A system prompt of about n_tokens; `salt` at the front makes each one a new prefix."""
    return f"Session {salt}. You are a helpful assistant. " + filler(n_tokens, salt)


def builtin_prompts(
    n: int, seed: int, prompt_tokens: int = 0, system: str | None = None, round_no: int = 0
) -> list[Prompt]:
    """n chat prompts in a fixed order for a given seed; the same for every target.

    `round_no` (a repeated measurement) starts every user message differently, so no target can
    answer a repeat from a cache of the earlier round's prompts: every round reads new prompts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = TOPICS[rng.randrange(len(TOPICS))]
        text = f"Request {round_no}.{i}: write a detailed essay about {topic}."
        if prompt_tokens:
            text = f"Read these notes, then answer.\n{filler(prompt_tokens, seed + i)}\n\n{text}"
        messages = [{"role": "user", "content": text}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        out.append(Prompt(messages))
    return out


def load_jsonl(path: Path) -> list[Prompt]:
    """Prompts from a JSONL file, one conversation a line, in any of these shapes:

    ShareGPT `{"conversations": [{"from": "human", "value": ...}, ...]}`, OpenAI `{"messages": [...]}`,
    or `{"prompt": "..."}`. A conversation is cut before its last assistant turn (the bench asks for that one)."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    prompts = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        if "prompt" in obj:
            messages = [{"role": "user", "content": str(obj["prompt"])}]
        else:
            turns = obj.get("conversations") or obj.get("messages") or []
            messages = [{"role": roles.get(str(t.get("from") or t.get("role")), "user"),
                         "content": str(t.get("value") if "value" in t else t.get("content", ""))} for t in turns]
            while messages and messages[-1]["role"] == "assistant":
                messages.pop()
        if not messages:
            raise ValueError(f"{path}:{lineno}: no prompt (expected conversations, messages or prompt)")
        prompts.append(Prompt(messages))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def cycle(prompts: list[Prompt], n: int, offset: int = 0) -> list[Prompt]:
    """n prompts taken in order from a user's set, wrapping around."""
    return [prompts[(offset + i) % len(prompts)] for i in range(n)]
