"""Every generation option lokal knows, stated once: its canonical name, type, range and limits,
and its name on each surface (an OpenAI request field, an Ollama ``options`` key, which is also
the Modelfile ``PARAMETER`` name, and the web UI's preset key).

The engine's ``SamplingParams`` takes its bounds from here; the OpenAI and Ollama adapters, the
Modelfile parser, ``/api/create`` and the UI's presets all check values through :func:`check`.
A leaf module: it imports nothing of lokal, so every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

MAX_STOP_STRINGS = 64
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS = 1024
MAX_LOGIT_BIAS_VALUE = 100.0
MAX_SEED = 2**32 - 1
MAX_TEXT_LENGTH = 256  # a text option's value: a model name

Kind = Literal["int", "float", "bool", "strings", "bias", "text"]


class OptionError(ValueError):
    """A value an option does not take; ``key`` is the name the caller used (``options.top_k``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.reason = message


def _no_limit_if_not_positive(value: Any) -> Any:
    """Ollama's num_predict: -1 (no limit), -2 (fill the context) and 0 mean "until the end"."""
    return None if isinstance(value, int) and value <= 0 else value


def _random_if_negative(value: Any) -> Any:
    """Ollama's seed -1: a random seed."""
    return None if isinstance(value, int) and value < 0 else value


@dataclass(frozen=True)
class Option:
    """One option. ``sampling``: the engine's sampler uses it (``SamplingParams`` has a field of
    that name); the others are used by the runtime (``num_ctx``) or accepted and kept because
    Ollama's clients and Modelfiles send them (``num_thread``, ``mirostat``...)."""

    name: str
    kind: Kind
    ge: float | None = None
    le: float | None = None
    openai: tuple[str, ...] = ()  # request fields (the first is the canonical one)
    ollama: str | None = None  # options key and Modelfile PARAMETER name
    ui: bool = False  # a key of the web UI's presets
    sampling: bool = True
    used: bool = True  # False: accepted and stored, without effect yet
    from_ollama: Callable[[Any], Any] | None = None  # Ollama's special values (before range checks)
    help: str = ""

    def bounds(self) -> dict[str, float]:
        """pydantic ``Field`` keyword arguments for the range."""
        out: dict[str, float] = {}
        if self.ge is not None:
            out["ge"] = self.ge
        if self.le is not None:
            out["le"] = self.le
        return out


def _ollama_only(name: str, kind: Kind) -> Option:
    return Option(name, kind, ollama=name, sampling=False, used=False, help="accepted for Ollama; not used")


OPTIONS: tuple[Option, ...] = (
    Option("max_tokens", "int", ge=1, openai=("max_tokens", "max_completion_tokens"), ollama="num_predict",
           ui=True, from_ollama=_no_limit_if_not_positive, help="tokens to generate at most"),
    Option("temperature", "float", ge=0.0, le=100.0, openai=("temperature",), ollama="temperature", ui=True),
    Option("top_k", "int", ge=0, le=1_000_000, openai=("top_k",), ollama="top_k", ui=True),
    Option("top_p", "float", ge=0.0, le=1.0, openai=("top_p",), ollama="top_p", ui=True),
    Option("min_p", "float", ge=0.0, le=1.0, openai=("min_p",), ollama="min_p", ui=True),
    Option("seed", "int", ge=0, le=MAX_SEED, openai=("seed",), ollama="seed", ui=True,
           from_ollama=_random_if_negative),
    Option("repeat_penalty", "float", ge=0.0, le=100.0, openai=("repeat_penalty",), ollama="repeat_penalty",
           ui=True),
    Option("repeat_last_n", "int", ge=-1, le=1_000_000, openai=("repeat_last_n",), ollama="repeat_last_n",
           help="-1: the whole context"),
    Option("presence_penalty", "float", ge=-2.0, le=2.0, openai=("presence_penalty",), ollama="presence_penalty"),
    Option("frequency_penalty", "float", ge=-2.0, le=2.0, openai=("frequency_penalty",),
           ollama="frequency_penalty"),
    Option("stop", "strings", openai=("stop",), ollama="stop",
           help=f"at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_LENGTH} characters"),
    Option("logit_bias", "bias", openai=("logit_bias",),
           help=f"at most {MAX_LOGIT_BIAS} token ids, each biased within ±{MAX_LOGIT_BIAS_VALUE:g}"),
    Option("ignore_eos", "bool", openai=("ignore_eos",), help="generate past the end-of-generation token"),
    Option("num_ctx", "int", ge=1, ollama="num_ctx", ui=True, sampling=False,
           help="context a request may use, up to the slot's (--ctx-size)"),
    Option("draft", "text", ollama="draft", sampling=False,
           help="a model with the same vocabulary that drafts tokens for this one (speculative decoding); "
                "read when the model loads, from its Modelfile (a request's is ignored)"),
    *(_ollama_only(n, "int") for n in ("num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "mirostat")),
    *(_ollama_only(n, "float") for n in ("typical_p", "mirostat_tau", "mirostat_eta", "tfs_z")),
    *(_ollama_only(n, "bool") for n in ("use_mmap", "use_mlock", "numa", "penalize_newline", "low_vram",
                                        "f16_kv", "vocab_only")),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
BY_OLLAMA: dict[str, Option] = {o.ollama: o for o in OPTIONS if o.ollama}
BY_OPENAI: dict[str, Option] = {field: o for o in OPTIONS for field in o.openai}
SAMPLING_NAMES: frozenset[str] = frozenset(o.name for o in OPTIONS if o.sampling)
UI_KEYS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.ui)
_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


def check(option: Option, value: Any, key: str | None = None) -> Any:
    """``value`` as ``option`` takes it (type and range), or OptionError naming ``key``. None passes
    through (not given). Numbers given as text (a Modelfile's) are read; bool is never a number."""
    key = key or option.name
    if value is None:
        return None
    kind = option.kind
    if kind == "strings":
        return _strings(value, key)
    if kind == "bias":
        return _bias(value, key)
    if kind == "bool":
        return _bool(value, key)
    if kind == "text":
        return _text(value, key)
    number = _number(value, key, integer=kind == "int")
    if option.ge is not None and number < option.ge:
        raise OptionError(key, f"must be at least {_show(option.ge)}, got {_show(number)}")
    if option.le is not None and number > option.le:
        raise OptionError(key, f"must be at most {_show(option.le)}, got {_show(number)}")
    return number


def _show(number: int | float) -> str:
    """A number for a message: whole numbers in full, a 400-digit JSON integer not at all."""
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e16:
        number = int(number)
    if isinstance(number, int):
        return str(number) if abs(number) < 10**20 else "a number too large to show"
    return f"{number:g}"


def _number(value: Any, key: str, integer: bool) -> int | float:
    what = "an integer" if integer else "a number"
    if isinstance(value, bool):
        raise OptionError(key, f"must be {what}, not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if integer and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise OptionError(key, f'must be {what}, not "{text[:64]}"') from None
    if not isinstance(value, int | float):
        raise OptionError(key, f"must be {what}, not {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OptionError(key, f"must be a number, not {value}")
        if integer:
            if not value.is_integer():
                raise OptionError(key, f"must be an integer, not {value:g}")
            return int(value)
    return value if integer or isinstance(value, float) else float(value)


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(key, f'must be true or false, not "{str(value)[:64]}"')


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OptionError(key, "must be a non-empty string")
    if len(value) > MAX_TEXT_LENGTH:
        raise OptionError(key, f"must be at most {MAX_TEXT_LENGTH} characters")
    return value.strip()


def _strings(value: Any, key: str) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else value
    if not isinstance(values, list | tuple):
        raise OptionError(key, "must be a string or a list of strings")
    if len(values) > MAX_STOP_STRINGS:
        raise OptionError(key, f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(values)}")
    for s in values:
        if not isinstance(s, str) or not s:
            raise OptionError(key, "stop strings must be non-empty strings")
        if len(s) > MAX_STOP_LENGTH:
            raise OptionError(key, f"stop strings must be at most {MAX_STOP_LENGTH} characters")
    return tuple(values)


def _bias(value: Any, key: str) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise OptionError(key, "must be an object of token id -> bias")
    if len(value) > MAX_LOGIT_BIAS:
        raise OptionError(key, f"may hold at most {MAX_LOGIT_BIAS} entries")
    out: dict[int, float] = {}
    for token, bias in value.items():
        if isinstance(token, str) and token.lstrip("-").isdigit():
            token = int(token)
        if not isinstance(token, int) or isinstance(token, bool):
            raise OptionError(key, f"keys must be token ids, got {token!r}")
        if token < 0:
            raise OptionError(key, f"token id {token} is negative")
        b = _number(bias, f"{key}.{token}", integer=False)
        if not -MAX_LOGIT_BIAS_VALUE <= b <= MAX_LOGIT_BIAS_VALUE:
            raise OptionError(key, f"value {b:g} is outside [-{MAX_LOGIT_BIAS_VALUE:g}, {MAX_LOGIT_BIAS_VALUE:g}]")
        out[token] = float(b)
    return out


def from_openai(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical options from OpenAI request fields (None: not given). Errors name the field."""
    out: dict[str, Any] = {}
    for field, value in fields.items():
        option = BY_OPENAI.get(field)
        if option is None or value is None:
            continue
        checked = check(option, value, field)
        if option.name not in out or field == option.openai[-1]:  # max_completion_tokens over max_tokens
            out[option.name] = checked
    return out


def check_ollama(option: Option, value: Any, key: str) -> tuple[Any, Any]:
    """An Ollama option's value as Ollama keeps it (typed: ``num_predict`` -1 stays -1) and as
    lokal uses it (canonical: -1 becomes None, no limit), or OptionError naming ``key``."""
    if option.kind in ("int", "float"):
        typed: Any = _number(value, key, integer=option.kind == "int")
    elif option.kind == "strings":
        typed = list(_strings([value] if isinstance(value, str) else value, key))
    else:
        typed = check(option, value, key)
    canonical = option.from_ollama(typed) if option.from_ollama is not None else typed
    return typed, check(option, canonical, key)


def from_ollama(options: Mapping[str, Any], prefix: str = "options.") -> dict[str, Any]:
    """Canonical options from Ollama ``options`` (a request's) or a model's stored parameters.
    Unknown keys are ignored, as Ollama ignores them; errors name the key with ``prefix``."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        option = BY_OLLAMA.get(key)
        if option is None or value is None:
            continue
        out[option.name] = check_ollama(option, value, f"{prefix}{key}")[1]
    return out


def to_ollama(canonical: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical options under their Ollama names (``show --parameters``, ``/api/show``)."""
    return {BY_NAME[k].ollama or k: v for k, v in canonical.items() if k in BY_NAME}
