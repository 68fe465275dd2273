"""What is asked: named presets, the built-in prompt set with controlled lengths, user JSONL prompts."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
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
    workload: str = ""  # code-edit | summarize | chat: the prompts come from workload_prompts
    max_tokens: int | None = None  # the workload's own answer budget, unless the user gives --max-tokens
    ignore_eos: bool = True  # False for workloads: the answer ends where the model ends it, as a user sees it

    def rounds_at(self, concurrency: int) -> int:
        """Requests per client at a level; one client sends at least 3, so its percentiles mean something."""
        return max(self.rounds, 3) if concurrency == 1 else self.rounds


SCENARIOS: dict[str, str] = {
    "single": "one user: TTFT, decode tok/s, prompt tok/s, end-to-end latency (c=1)",
    "sweep": "concurrency sweep (--concurrency, default 1,10,100): req/s, aggregate tok/s, latency percentiles",
    "long-prompt": "one user with a long prompt (--prompt-tokens, default 1500): prompt processing speed",
    "shared-prefix": "every request shares one system prompt (--prefix-tokens): the prefix cache's effect",
    "all": "single, sweep and the cold/warm prefix check",
    "code-edit": "one user renames a variable in a ~400-token function; the answer repeats the prompt "
                 "(where speculation pays)",
    "summarize": "one user: a ~1,500-token built-in text, a short summary (prefill-bound)",
    "chat": "one user: short questions, answers that repeat nothing (speculation must not slow it)",
}

# A workload's answer budget: enough to rewrite the whole function, a few sentences, a short reply.
WORKLOAD_MAX_TOKENS = {"code-edit": 640, "summarize": 96, "chat": 128}
WORKLOADS = tuple(WORKLOAD_MAX_TOKENS)


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
    if name in WORKLOAD_MAX_TOKENS:
        return Scenario(name, concurrency or [1], rounds or 3, description=SCENARIOS[name], workload=name,
                        max_tokens=WORKLOAD_MAX_TOKENS[name], ignore_eos=False)
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


@cache
def builtin_text(name: str) -> str:
    """A text shipped with lokal (lokal/bench/texts/): `code_edit.py.txt` or `summarize.txt`."""
    return resources.files("lokal.bench").joinpath("texts", name).read_text(encoding="utf-8")


# code-edit: (old name, new name) pairs of variables in the built-in function; each request renames another one
RENAMES = [("subtotal", "net_amount"), ("entry", "record"), ("customer", "client"), ("quantity", "count"),
           ("shipping", "delivery_fee"), ("largest", "biggest"), ("result", "by_customer"), ("price", "unit_price"),
           ("total", "grand_total"), ("code", "voucher")]

CHAT_QUESTIONS = [
    "What is one good habit for learning to {verb}?", "Give me a tip for someone who wants to {verb}.",
    "Why do some people find it hard to {verb}?", "How long does it take to learn to {verb}?",
]
CHAT_VERBS = ["swim", "cook rice", "play the guitar", "write clearly", "speak French", "ride a bicycle",
              "draw faces", "sleep well", "bake bread", "read faster", "grow tomatoes", "juggle"]


def code_edit_prompt(old: str, new: str, tag: str = "") -> Prompt:
    """Rename `old` to `new` in the built-in function and output the whole function: the answer is the prompt's
    code again with one name changed. `tag` goes first, so no two requests share a cached prefix."""
    code = builtin_text("code_edit.py.txt")
    text = (f"{tag}Rename the variable `{old}` to `{new}` in this Python function. Change nothing else. "
            f"Output the whole function in one ```python block, with no explanation.\n\n```python\n{code}```")
    return Prompt([{"role": "user", "content": text}])


def code_edit_answer(old: str, new: str) -> str:
    """The expected answer of code_edit_prompt: the function with every whole-word `old` renamed (for tests)."""
    return re.sub(rf"\b{re.escape(old)}\b", new, builtin_text("code_edit.py.txt"))


def summarize_prompt(tag: str = "") -> Prompt:
    text = (f"{tag}Summarize the following text in three sentences.\n\n{builtin_text('summarize.txt')}\n\n"
            "Summary in three sentences:")
    return Prompt([{"role": "user", "content": text}])


def chat_prompt(i: int, tag: str = "") -> Prompt:
    q = CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)].format(verb=CHAT_VERBS[(i * 5 + i // 12) % len(CHAT_VERBS)])
    return Prompt([{"role": "user", "content": f"{tag}{q} Answer in a few sentences."}])


def workload_prompts(workload: str, n: int, seed: int, round_no: int = 0) -> list[Prompt]:
    """n prompts of a workload scenario, the same for every target; each starts with `Request r.i:`, so a
    repeated measurement (round_no) reads prompts no target has cached."""
    out = []
    for i in range(n):
        k = seed + round_no * n + i
        tag = f"Request {round_no}.{i}: "
        if workload == "code-edit":
            out.append(code_edit_prompt(*RENAMES[k % len(RENAMES)], tag=tag))
        elif workload == "summarize":
            out.append(summarize_prompt(tag))
        elif workload == "chat":
            out.append(chat_prompt(k, tag))
        else:
            raise ValueError(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")
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
