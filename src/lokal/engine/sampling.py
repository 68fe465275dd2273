"""Per-request sampling parameters, turned into a llama.cpp chain. Names, types and ranges come
from ``lokal.options`` (the one vocabulary of generation options); the defaults are OpenAI's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lokal.options import BY_NAME, OptionError, check

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


def _bounds(name: str) -> dict[str, Any]:
    return dict(BY_NAME[name].bounds())


class SamplingParams(BaseModel):
    """What one request asks of the sampler. Defaults follow the OpenAI API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(default=None, description="None: until the context fills", **_bounds("max_tokens"))
    temperature: float = Field(default=0.8, **_bounds("temperature"))
    top_k: int = Field(default=40, **_bounds("top_k"))
    top_p: float = Field(default=0.95, **_bounds("top_p"))
    min_p: float = Field(default=0.05, **_bounds("min_p"))
    seed: int | None = Field(default=None, **_bounds("seed"))
    repeat_penalty: float = Field(default=1.0, **_bounds("repeat_penalty"))
    repeat_last_n: int = Field(default=64, **_bounds("repeat_last_n"))
    presence_penalty: float = Field(default=0.0, **_bounds("presence_penalty"))
    frequency_penalty: float = Field(default=0.0, **_bounds("frequency_penalty"))
    logit_bias: dict[int, float] = Field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    grammar: str | None = Field(default=None, description="GBNF (root rule 'root') the output must match")
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="None: none; k: each token's logprob and the k most likely")

    @field_validator("stop", "logit_bias", mode="before")
    @classmethod
    def _vocabulary(cls, value: object, info: Any) -> object:
        if value is None:
            return () if info.field_name == "stop" else {}
        try:
            return check(BY_NAME[info.field_name], value)
        except OptionError as exc:
            raise ValueError(exc.reason) from None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0
