"""Chat templates: Jinja2 from GGUF metadata, Modelfiles or requests. Templates are untrusted: they
render in a sandbox (``sandbox``) inside worker processes with a time and memory budget (``render_pool``)."""

from __future__ import annotations

from typing import Any

from lokal.templates import render_pool
from lokal.templates.sandbox import (
    MAX_RENDER_MIB,
    MAX_RENDER_S,
    MAX_RENDERED_CHARS,
    MAX_TEMPLATE_CHARS,
    TemplateError,
)

__all__ = [
    "CHATML_TEMPLATE", "FALLBACK_BY_ARCHITECTURE", "GEMMA_TEMPLATE", "MAX_RENDERED_CHARS", "MAX_RENDER_MIB",
    "MAX_RENDER_S", "MAX_TEMPLATE_CHARS", "ChatTemplate", "TemplateError",
]

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


class ChatTemplate:
    """A compiled chat template with the special tokens it may reference."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        """Raises TemplateError if ``source`` is too long or does not compile (compiled in a
        render worker, under the same budget as a render)."""
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"chat template is {len(source)} characters, limit {MAX_TEMPLATE_CHARS}")
        render_pool.compile_check(source)
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
        variables: dict[str, Any] | None = None,
    ) -> str:
        """Render messages to the prompt text; any failure becomes a TemplateError. The render
        runs in a worker process: at most MAX_RENDER_S and MAX_RENDER_MIB, whatever the template.
        ``variables``: more for the template to read (a thinking model's ``enable_thinking``)."""
        return render_pool.render(self.source, {
            **(variables or {}),
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tools": tools,
        })
