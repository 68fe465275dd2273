"""A model's manifest: which blob holds its weights and what lokal knows about it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from lokal.store.errors import InvalidModelName
from lokal.store.gguf_facts import GgufFacts
from lokal.store.kinds import ModelKind, kind_from_facts
from lokal.store.names import parse_model_name

MANIFEST_SCHEMA_VERSION = 1


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class AdapterLayer(BaseModel):
    """A LoRA adapter a model applies over its weights (``ADAPTER`` in its Modelfile)."""

    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256 of the adapter's GGUF blob")
    size: int = Field(ge=0)
    scale: float = Field(default=1.0, gt=0.0, description="how strongly its update is applied")


class Manifest(BaseModel):
    """Stored as ``manifests/<name>/<tag>.json``; written only after its blob is verified."""

    schema_version: Literal[1] = 1
    name: str = Field(description='canonical "name:tag"')
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256 of the GGUF blob")
    size: int = Field(ge=0)
    format: Literal["gguf", "tar"] = Field(default="gguf", description='"tar": a folder model (lokal.store.archive)')
    source: str = Field(description='"pypi:pkg==ver", "hf.co/owner/repo/file.gguf", "file:/path"')
    facts: GgufFacts
    kind: ModelKind = Field(default="chat", description="what the model is; derived from its facts when absent")
    system: str | None = None
    template: str | None = Field(default=None, description="overrides the GGUF chat template")
    parameters: dict[str, Any] = {}
    messages: list[dict[str, str]] = Field(default=[], description="MESSAGE turns put before every chat")
    license: str | None = None
    projector: str | None = Field(
        default=None, pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of its vision projector's blob (a second FROM in its Modelfile); None: text only",
    )
    adapters: list[AdapterLayer] = Field(
        default=[], description="LoRA adapters applied over the weights blob, which is not copied: the base's"
    )
    modified_at: datetime = Field(default_factory=utc_now)

    @property
    def blobs(self) -> set[str]:
        """Every blob this model uses (weights, adapters, projector): what deletion must keep."""
        return {self.digest, *(a.digest for a in self.adapters), *([self.projector] if self.projector else [])}

    @model_validator(mode="before")
    @classmethod
    def _derived_kind(cls, data: Any) -> Any:
        # Manifests written before kinds existed, and new ones not given a kind, get their facts' kind.
        if isinstance(data, dict) and data.get("kind") is None and data.get("facts") is not None:
            facts = data["facts"]
            facts = facts if isinstance(facts, GgufFacts) else GgufFacts.model_validate(facts)
            data = {**data, "kind": kind_from_facts(facts)}
        return data

    @field_validator("name")
    @classmethod
    def _canonical_name(cls, value: str) -> str:
        try:
            return str(parse_model_name(value))
        except InvalidModelName as e:
            raise ValueError(str(e)) from None

    @field_validator("modified_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
