"""Chat templates: Jinja2 from GGUF metadata, rendered in a sandbox because templates are untrusted."""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 256 * 1024
MAX_RENDERED_CHARS = 8 * 1024 * 1024
MAX_RENDER_S = 2.0  # a template that loops longer is hostile or broken

# Used when a GGUF carries no template: ChatML is what most small instruct models were tuned on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma has no system role: the system prompt is folded into the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\\n\\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + (ns.system if role == 'user' else '')"
    " + message['content'] + '<end_of_turn>\\n' }}"
    "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

FALLBACK_BY_ARCHITECTURE = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


class TemplateError(ValueError):
    """A chat template could not be compiled or rendered (bad or hostile template, bad messages)."""


class _RenderBudget(threading.local):
    deadline: float = math.inf


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a render deadline checked at every call, attribute and item
    access a template makes (a loop that does anything at all passes through one of them)."""

    budget = _RenderBudget()
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``'x' * 10**9`` or ``9 ** 9 ** 9`` would exhaust memory or time before any check."""
        self._check()
        if operator == "**":
            if isinstance(right, int) and abs(right) > 1024:
                raise TemplateError("chat template computed an oversized power")
            return left**right
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                raise TemplateError("chat template produced an oversized prompt")
        return left * right

    def _check(self) -> None:
        if time.perf_counter() > self.budget.deadline:
            raise TemplateError(f"chat template took longer than {MAX_RENDER_S:g} s to render")

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._check()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._check()
        return super().getitem(obj, argument)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt)[:64])


class ChatTemplate:
    """A compiled chat template with the special tokens it may reference."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"chat template is {len(source)} characters, limit {MAX_TEMPLATE_CHARS}")
        env = _BoundedSandbox(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template does not compile: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def for_model(cls, source: str | None, architecture: str | None, bos: str, eos: str) -> ChatTemplate:
        """The model's own template, or a fallback chosen by architecture."""
        if not source:
            source = FALLBACK_BY_ARCHITECTURE.get(architecture or "", CHATML_TEMPLATE)
        return cls(source, bos, eos)

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render messages to the prompt text; any failure becomes a TemplateError."""
        budget = _BoundedSandbox.budget
        budget.deadline = time.perf_counter() + MAX_RENDER_S
        parts: list[str] = []
        size = 0
        try:
            for part in self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools,
            ):
                size += len(part)
                if size > MAX_RENDERED_CHARS:  # stop before a hostile template fills memory
                    raise TemplateError("chat template produced an oversized prompt")
                if time.perf_counter() > budget.deadline:
                    raise TemplateError(f"chat template took longer than {MAX_RENDER_S:g} s to render")
                parts.append(part)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"chat template tried an unsafe operation: {exc}") from exc
        except Exception as exc:  # untrusted template: anything it raises is its own fault
            raise TemplateError(f"chat template failed to render: {type(exc).__name__}: {exc}") from exc
        finally:
            budget.deadline = math.inf
        return "".join(parts)
