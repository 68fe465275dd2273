"""Embeddings for every API surface: one implementation (``compute_embeddings``) and thin routes
for OpenAI's ``POST /v1/embeddings`` and Ollama's ``POST /api/embed`` and ``POST /api/embeddings``."""

from __future__ import annotations

import base64
import math
import struct
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lokal.engine.embedder import l2_normalize
from lokal.server.errors import APIError
from lokal.server.generation import get_runtime
from lokal.server.ollama.generate import keep_alive_seconds

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request

EmbedInput = str | list[int]  # a text, or token ids (OpenAI only)


@dataclass(frozen=True)
class Embeddings:
    """What one embeddings request produced, whichever API asked."""

    vectors: list[list[float]]
    prompt_tokens: int
    dimensions: int  # the model's embedding size
    load_s: float  # time spent waiting for the model to load
    total_s: float


async def compute_embeddings(request: Request, model: str, inputs: list[EmbedInput], *, truncate: bool = True,
                             normalize: bool = True, keep_alive: float | None = None,
                             exact_dimensions: int | None = None, param: str = "input") -> Embeddings:
    """Embed the inputs through the runtime. An empty list still loads the model (Ollama's way to
    preload one) and yields no vectors."""
    runtime = get_runtime(request)
    started = time.monotonic()
    result, dimensions, load_s = await runtime.embed(model, inputs, truncate=truncate, normalize=normalize,
                                                     keep_alive=keep_alive, dimensions=exact_dimensions,
                                                     param=param)
    return Embeddings(result.vectors, result.prompt_tokens, dimensions, load_s, time.monotonic() - started)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown fields are ignored, as both APIs do


# ---- OpenAI: POST /v1/embeddings ---------------------------------------------------------------
class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 when asked


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def _openai_inputs(raw: str | list[str] | list[int] | list[list[int]]) -> list[EmbedInput]:
    """OpenAI's four input shapes as a list of texts or token lists; empty ones are refused."""
    items: list[EmbedInput] = []
    if isinstance(raw, str):
        items = [raw]
    elif raw and isinstance(raw[0], int):
        items = [[x for x in raw if isinstance(x, int)]]  # one token array
    else:
        items = [x for x in raw if not isinstance(x, int)]
    if not items:
        raise APIError(400, "input must not be an empty list", param="input")
    if len(items) > MAX_INPUTS:
        raise APIError(400, f"input has {len(items)} items; at most {MAX_INPUTS} are allowed", param="input")
    for i, item in enumerate(items):
        if len(item) == 0:
            raise APIError(400, f"input[{i}] is empty; embeddings need at least one token", param="input")
    return items


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["openai"])
async def openai_embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    """OpenAI's embeddings: one L2-normalized vector per input (text or token ids); an input
    longer than the context is refused (400 ``context_length_exceeded``), not truncated."""
    inputs = _openai_inputs(body.input)
    if body.dimensions is not None and body.dimensions <= 0:
        raise APIError(400, "dimensions must be a positive integer", param="dimensions")
    # Like OpenAI, an input longer than the context is an error rather than silently cut.
    result = await compute_embeddings(request, body.model, inputs, truncate=False, exact_dimensions=body.dimensions)
    encode = _base64_floats if body.encoding_format == "base64" else (lambda v: v)
    return EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode(v)) for i, v in enumerate(result.vectors)],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )


# ---- Ollama: POST /api/embed and the older POST /api/embeddings --------------------------------
class OllamaEmbedRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] | None = None
    truncate: bool = True
    dimensions: int | None = None
    options: dict[str, Any] | None = None  # accepted; no option changes an embedding here
    keep_alive: float | int | str | None = None


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int  # nanoseconds
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingsRequest(_Request):
    model: str = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | int | str | None = None


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


def _ns(seconds: float) -> int:
    return math.floor(seconds * 1e9)


@router.post("/api/embed", response_model=OllamaEmbedResponse, tags=["ollama"])
async def ollama_embed(body: OllamaEmbedRequest, request: Request) -> OllamaEmbedResponse:
    """Ollama's embed: L2-normalized vectors; an empty input only loads the model."""
    raw = body.input
    inputs: list[EmbedInput] = ([raw] if raw else []) if isinstance(raw, str) or raw is None else list(raw)
    result = await compute_embeddings(request, body.model, inputs, truncate=body.truncate,
                                      keep_alive=keep_alive_seconds(body.keep_alive))
    vectors = result.vectors
    if body.dimensions is not None and 0 < body.dimensions < result.dimensions:
        # As Ollama does: keep the first dimensions and normalize again.
        vectors = [l2_normalize(v[: body.dimensions]) for v in vectors]
    return OllamaEmbedResponse(
        model=body.model,
        embeddings=vectors,
        total_duration=_ns(result.total_s),
        load_duration=_ns(result.load_s),
        prompt_eval_count=result.prompt_tokens,
    )


@router.post("/api/embeddings", response_model=OllamaEmbeddingsResponse, tags=["ollama"])
async def ollama_embeddings(body: OllamaEmbeddingsRequest, request: Request) -> OllamaEmbeddingsResponse:
    """Ollama's older endpoint: one vector, not normalized; an empty prompt only loads the model."""
    inputs: list[EmbedInput] = [body.prompt] if body.prompt else []
    result = await compute_embeddings(request, body.model, inputs, normalize=False,
                                      keep_alive=keep_alive_seconds(body.keep_alive), param="prompt")
    return OllamaEmbeddingsResponse(embedding=result.vectors[0] if result.vectors else [])
