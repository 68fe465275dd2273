"""Per-request sampling parameters, validated at the API edge and turned into a llama.cpp chain."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


class SamplingParams(BaseModel):
    """What one request asks of the sampler. Defaults follow the OpenAI API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(default=None, ge=1, description="None: until the context fills")
    temperature: float = Field(default=0.8, ge=0.0, le=100.0)
    top_k: int = Field(default=40, ge=0, le=1_000_000)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    repeat_penalty: float = Field(default=1.0, ge=0.0, le=100.0)
    repeat_last_n: int = Field(default=64, ge=-1, le=1_000_000)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    grammar: str | None = Field(default=None, description="GBNF (root rule 'root') the output must match")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        return value

    @field_validator("stop")
    @classmethod
    def _stop_bounds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        for s in value:
            if not s:
                raise ValueError("stop strings must not be empty")
            if len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_bounds(cls, value: dict[int, float]) -> dict[int, float]:
        if len(value) > 1024:
            raise ValueError("logit_bias may hold at most 1024 entries")
        for token, bias in value.items():
            if token < 0:
                raise ValueError(f"logit_bias token id {token} is negative")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias value {bias} is outside [-100, 100]")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0
