"""Ollama's ``options`` (Modelfile parameters) mapped onto lokal's sampling parameters."""

from __future__ import annotations

import logging
from typing import Any

from lokal.engine.sampling import SamplingParams
from lokal.runtime.loaded_model import LoadedModel
from lokal.server.errors import APIError
from lokal.server.generation import checked_sampling

log = logging.getLogger(__name__)

# Ollama option -> SamplingParams field.
SAMPLING_OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
}


def sampling_from_options(loaded: LoadedModel, options: dict[str, Any] | None) -> SamplingParams:
    """Request options over the model's Modelfile parameters over lokal's defaults. Options lokal
    has no use for (num_gpu, mirostat, num_thread, ...) are ignored, as Ollama ignores unknown ones."""
    fields: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key == "num_ctx":
            continue  # applied to the prompt by context_limit()
        field = SAMPLING_OPTIONS.get(key)
        if field is None:
            log.debug("ignoring option %s=%r", key, value)
            continue
        if value is None:
            continue
        if key == "num_predict":
            value = _num_predict(value)
        elif key == "seed" and isinstance(value, int) and not isinstance(value, bool) and value < 0:
            value = None  # Ollama's -1: a random seed
        fields[field] = value
    try:
        return checked_sampling(loaded, **fields)
    except APIError as exc:
        name = {v: k for k, v in SAMPLING_OPTIONS.items()}.get(exc.param or "", exc.param)
        message = exc.message.replace(f" {exc.param}:", f" options.{name}:")
        raise APIError(400, message, param=f"options.{name}") from exc


def _num_predict(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"options.num_predict must be an integer, got {value!r}", param="options.num_predict")
    # -1 (no limit), -2 (fill the context) and, as in Ollama's runner, 0: generation stops only
    # at the end of the answer or when the slot's context is full.
    return -1 if value <= 0 else value


def context_limit(loaded: LoadedModel, options: dict[str, Any] | None) -> int:
    """The context a request may use: ``num_ctx`` when it is smaller than a slot, else the slot.

    lokal's slots have a fixed size (``--ctx-size``); Ollama would reload the model with a larger
    one. A larger num_ctx is clamped to the slot (clients often send 8192 or more by habit)."""
    slot = loaded.context_length
    num_ctx = (options or {}).get("num_ctx")
    if num_ctx is None:
        return slot
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1:
        raise APIError(400, f"options.num_ctx must be a positive integer, got {num_ctx!r}", param="options.num_ctx")
    if num_ctx > slot:
        log.debug("num_ctx %d is larger than the slot context %d: using %d", num_ctx, slot, slot)
    return min(num_ctx, slot)


def fit_to_context(params: SamplingParams, n_prompt: int, n_ctx: int, slot_ctx: int) -> SamplingParams:
    """Refuse a prompt that does not fit in n_ctx, and stop generation where n_ctx ends."""
    if n_ctx >= slot_ctx:
        return params  # the engine enforces the slot itself
    if n_prompt >= n_ctx:
        raise APIError(400, f"prompt is {n_prompt} tokens but num_ctx is {n_ctx} tokens "
                            "(and at least one must be left to generate)", param="options.num_ctx")
    room = n_ctx - n_prompt
    if params.max_tokens is None or params.max_tokens > room:
        return params.model_copy(update={"max_tokens": room})
    return params
