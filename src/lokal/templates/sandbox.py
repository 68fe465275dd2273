"""The Jinja sandbox chat templates render in, and its in-process checks.

These checks are the cheap first line: a deadline tested at every call, attribute and item
access, and size checks on ``*``, ``**`` and the output. They cannot stop a loop that does none
of those (``{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}``) nor a filter that
allocates a gigabyte in one step (``'x'|center(10**9)``): that is why templates render in a
worker process with a memory limit and a deadline the parent enforces (``render_pool``).

Import-light on purpose: the render worker imports this module and jinja2, nothing else of lokal.
"""

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
MAX_RENDER_MIB = 512  # address space a render may use above its worker's baseline


class TemplateError(ValueError):
    """A chat template could not be compiled or rendered (bad or hostile template, bad messages)."""


def timeout_message() -> str:
    return f"chat template took longer than {MAX_RENDER_S:g} s to render"


def memory_message() -> str:
    return f"chat template needed more than {MAX_RENDER_MIB} MiB to render"


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
            raise TemplateError(timeout_message())

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


def compile_template(source: str) -> jinja2.Template:
    """``source`` compiled in a fresh sandbox. Raises TemplateError."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"chat template is {len(source)} characters, limit {MAX_TEMPLATE_CHARS}")
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template does not compile: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # RecursionError on absurd nesting, and the like
        raise TemplateError(f"chat template does not compile: {type(exc).__name__}: {exc}") from exc


def render_template(template: jinja2.Template, variables: dict[str, Any]) -> str:
    """Render in this process, with the sandbox's own checks only; any failure but MemoryError
    becomes a TemplateError."""
    budget = _BoundedSandbox.budget
    budget.deadline = time.perf_counter() + MAX_RENDER_S
    parts: list[str] = []
    size = 0
    try:
        for part in template.generate(**variables):
            size += len(part)
            if size > MAX_RENDERED_CHARS:  # stop before a hostile template fills memory
                raise TemplateError("chat template produced an oversized prompt")
            if time.perf_counter() > budget.deadline:
                raise TemplateError(timeout_message())
            parts.append(part)
    except (TemplateError, MemoryError):
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"chat template tried an unsafe operation: {exc}") from exc
    except Exception as exc:  # untrusted template: anything it raises is its own fault
        raise TemplateError(f"chat template failed to render: {type(exc).__name__}: {exc}") from exc
    finally:
        budget.deadline = math.inf
    return "".join(parts)
