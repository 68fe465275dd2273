"""The facts about a GGUF model that lokal shows and plans with, read from its header."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from lokal.store.errors import InvalidGguf

if TYPE_CHECKING:
    from lokal.store.gguf_header import GgufHeader

# The header reader (gguf, numpy: ~0.2 s to import) loads only when a file is read, so that
# listing or showing models stays quick.

MetadataScalar = str | int | float | bool


class ArraySummary(BaseModel):
    """Stands in for a metadata array too long to keep (a vocabulary, merges, scores)."""

    type: Literal["array"] = "array"
    element_type: str
    length: int


MetadataValue = MetadataScalar | list[MetadataScalar] | ArraySummary


class GgufFacts(BaseModel):
    """Architecture, size, quantization and template of a GGUF model, plus its scalar metadata."""

    architecture: str | None = None
    name: str | None = None
    parameter_count: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    embedding_length: int | None = None
    block_count: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    chat_template: str | None = None
    license: str | None = None
    tensor_count: int = 0
    metadata: dict[str, MetadataValue] = {}


def read_gguf_facts(path: Path | str) -> GgufFacts:
    """Read the facts of the GGUF file at ``path``.

    Any problem with the file (missing, not GGUF, truncated, garbage) raises
    :class:`InvalidGguf` with the message ``<path> is not a valid GGUF file: <reason>``.
    """
    from lokal.store.gguf_header import read_gguf_header

    try:
        return facts_from_header(read_gguf_header(Path(path)))
    except InvalidGguf as e:
        raise InvalidGguf(f"{path} is not a valid GGUF file: {e}") from e
    except Exception as e:  # a hostile header must never surface as another error type
        raise InvalidGguf(f"{path} is not a valid GGUF file: {type(e).__name__}: {e}") from e


def facts_from_header(header: GgufHeader) -> GgufFacts:
    """Derive :class:`GgufFacts` from a parsed header."""
    from lokal.store.gguf_header import ArrayInfo

    meta = header.metadata
    arch = _str(meta.get("general.architecture"))

    def arch_int(key: str) -> int | None:
        return _int(meta.get(f"{arch}.{key}")) if arch else None

    parameter_count = _int(meta.get("general.parameter_count"))
    if parameter_count is None and header.tensors:
        parameter_count = sum(t.n_elements for t in header.tensors)
    return GgufFacts(
        architecture=arch,
        name=_str(meta.get("general.name")),
        parameter_count=parameter_count,
        quantization=_quantization(header),
        context_length=arch_int("context_length"),
        embedding_length=arch_int("embedding_length"),
        block_count=arch_int("block_count"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        chat_template=_str(meta.get("tokenizer.chat_template")),
        license=_str(meta.get("general.license")),
        tensor_count=len(header.tensors),
        metadata={
            key: ArraySummary(element_type=value.element_type, length=value.length)
            if isinstance(value, ArrayInfo)
            else _metadata_value(value)
            for key, value in meta.items()
        },
    )


def _quantization(header: GgufHeader) -> str | None:
    """llama.cpp's name for the file type (``Q4_K_M``), else the dominant tensor type."""
    from gguf import LlamaFileType

    file_type = _int(header.metadata.get("general.file_type"))
    if file_type is not None:
        try:
            name = LlamaFileType(file_type & ~LlamaFileType.GUESSED).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass  # a file type newer than our gguf package: fall back to the tensors
    weights = Counter[str]()
    for tensor in header.tensors:
        if len(tensor.shape) >= 2:  # norms and biases stay F32 in every quantization
            weights[tensor.type.name] += tensor.n_elements
    return weights.most_common(1)[0][0] if weights else None


def _metadata_value(value: Any) -> MetadataValue:
    if isinstance(value, list):
        return [_scalar(v) for v in value]
    return _scalar(value)


def _scalar(value: Any) -> MetadataScalar:
    if isinstance(value, float):
        return _short_float32(value)
    if isinstance(value, str | int | bool):
        return value
    return str(value)


def _short_float32(value: float) -> float:
    """A float32 read as a double prints as 9.999999747378752e-06: keep the shortest decimal
    that is the same float32 (1e-05)."""
    try:
        as_float32 = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return value  # a genuine double (FLOAT64) too large for float32
    if as_float32 != value:
        return value  # a FLOAT64 value: keep it exactly
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == value:
            return short
    return value


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        if ints and len(ints) == len(value):
            return max(ints)  # per-layer values (head counts of some architectures)
    return None
