"""How much memory a model needs when lokal runs it: weights + KV cache + compute buffers + overhead.

The weights are the GGUF's tensor bytes; the KV cache comes from the architecture (one
implementation: :func:`lokal.runtime.sizing.kv_bytes_per_token`); the compute buffer and the
overhead are calibrated against measured RSS on lokal's development machine (see
docs/memory-estimate.md, and tests/integration/advise/ which re-checks them within ±15 %).

Sources: a :class:`ModelShape`, a store :class:`Manifest`, a store or catalog name, a GGUF path,
an ``http(s)://`` URL or ``hf.co/owner/repo:quant`` (only the header is fetched, with HTTP
range requests), or a generic size such as ``7b:q4_k_m`` for planning.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lokal.store.gguf_facts import ArraySummary, GgufFacts

if TYPE_CHECKING:
    import httpx

    from lokal.store.gguf_header import GgufHeader

MIB = 1024 * 1024
# Calibrated on smollm2:135m and gemma3:270m (docs/memory-estimate.md). Without flash attention
# llama.cpp's CPU graph holds the f32 attention scores (ubatch x slot context x heads) and their
# softmax: about 1.7 times one score matrix is touched when a prompt fills the context. With flash
# attention (lokal's own llama-cpp-python build) the scores are never materialised.
COMPUTE_SCORES_FACTOR = 1.7
COMPUTE_BASE_BYTES = 4 * MIB  # activations, norms, the f32 logits row of each output
# With flash attention the largest live tensors are one ubatch's activations: about 10 f32 values
# per token per embedding dimension (residual, norms, Q/K/V, the FFN's gate and up projections).
# Without it the fitted score term above covers them.
ACTIVATION_FLOATS_PER_DIM = 10
OVERHEAD_BASE_BYTES = 17 * MIB  # context, graph metadata, llama.cpp's allocations at load
OVERHEAD_PER_VOCAB_TOKEN = 183  # vocabulary strings, maps and scores in llama.cpp's C++ structures
DEFAULT_BATCH = 512  # lokal's LOKAL_BATCH_SIZE: n_batch = n_ubatch
TIGHT_SHARE = 0.7  # above this share of available RAM other programs start to feel it
REMOTE_FIRST_BYTES = 256 * 1024
REMOTE_MAX_HEADER = 128 * MIB

# llama.cpp's average bits per weight of whole files (norms stay f32, K-quants mix types).
QUANT_BITS: dict[str, float] = {
    "Q2_K": 3.0, "Q3_K_M": 3.9, "Q4_0": 4.55, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0,
}

# Representative architectures for planning by size ("7b"): layers, heads, KV heads, head size,
# embedding, vocabulary: the common open models of each size (Llama 3.x, Qwen 2.5).
GENERIC_ARCHS: dict[float, tuple[str, int, int, int, int, int, int]] = {
    0.5: ("qwen2.5-0.5b", 24, 14, 2, 64, 896, 151936),
    1.0: ("llama3.2-1b", 16, 32, 8, 64, 2048, 128256),
    1.5: ("qwen2.5-1.5b", 28, 12, 2, 128, 1536, 151936),
    3.0: ("llama3.2-3b", 28, 24, 8, 128, 3072, 128256),
    7.0: ("qwen2.5-7b", 28, 28, 4, 128, 3584, 152064),
    8.0: ("llama3.1-8b", 32, 32, 8, 128, 4096, 128256),
    14.0: ("qwen2.5-14b", 48, 40, 8, 128, 5120, 152064),
    32.0: ("qwen2.5-32b", 64, 40, 8, 128, 5120, 152064),
    70.0: ("llama3.1-70b", 80, 64, 8, 128, 8192, 128256),
}

# The catalog's models, from their GGUF headers, so that a model can be sized before it is pulled.
CATALOG_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2:135m": {"architecture": "llama", "block_count": 30, "head_count": 9, "head_count_kv": 3,
                     "embedding_length": 576, "context_length": 8192, "n_vocab": 49152,
                     "weights_bytes": 96_576_768, "quantization": "Q4_1", "parameter_count": 134_515_008},
    "gemma3:270m": {"architecture": "gemma3", "block_count": 18, "head_count": 4, "head_count_kv": 1,
                    "embedding_length": 640, "context_length": 32768, "n_vocab": 262144, "key_length": 256,
                    "value_length": 256, "weights_bytes": 246_587_904, "quantization": "Q4_K_M",
                    "parameter_count": 268_098_176},
    "qwen2.5-coder:0.5b": {"architecture": "qwen2", "block_count": 24, "head_count": 14, "head_count_kv": 2,
                           "embedding_length": 896, "context_length": 32768, "n_vocab": 151936,
                           "weights_bytes": 485_400_000, "quantization": "Q4_K_M", "parameter_count": 494_032_768},
}


F16_BYTES = 2
# Bytes per cached K/V element for the KV cache types llama.cpp offers (q8_0: 34-byte blocks of
# 32 values, q4_0: 18-byte blocks of 32).
KV_TYPE_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def kv_bytes_per_token(facts: GgufFacts, kv_type: str = "f16") -> int | None:
    """K and V for every layer: layers x kv_heads x (key_length + value_length) x bytes per element
    of ``kv_type`` (f16 by default, as lokal runs). Head sizes default to embedding_length /
    head_count unless the GGUF states them (Gemma)."""
    if not (facts.block_count and facts.head_count and facts.embedding_length):
        return None
    default = facts.embedding_length // facts.head_count
    arch = facts.architecture or ""
    k = facts.metadata.get(f"{arch}.attention.key_length", default)
    v = facts.metadata.get(f"{arch}.attention.value_length", default)
    if not isinstance(k, int) or not isinstance(v, int):
        return None
    kv_heads = facts.head_count_kv or facts.head_count
    return int(facts.block_count * kv_heads * (k + v) * KV_TYPE_BYTES[kv_type])


class EstimateError(ValueError):
    """The model cannot be sized: unknown name, unreadable header, unknown architecture."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    name: str
    facts: GgufFacts
    weights_bytes: int
    n_vocab: int
    source: str  # "store", "catalog", "file", "remote", "generic"
    # Each tensor's name and bytes, from the GGUF header (where the offload planner puts each
    # layer); empty when the model was sized without one (catalog, generic, a manifest alone).
    tensor_bytes: tuple[tuple[str, int], ...] = ()

    @property
    def quantization(self) -> str | None:
        return self.facts.quantization

    @property
    def context_length(self) -> int | None:
        return self.facts.context_length


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one loaded model takes: a slot count of ``parallel`` with ``ctx`` tokens each."""

    model: str
    ctx: int
    parallel: int
    kv_type: str
    batch: int
    weights: int
    kv_cache: int
    compute: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class Fit:
    """Whether a model fits in the memory available: ``fit`` is fits, tight or wont_fit."""

    fit: str
    needed_bytes: int
    available_bytes: int
    estimate: MemoryEstimate

    def to_dict(self) -> dict[str, Any]:
        return {"fit": self.fit, "needed_bytes": self.needed_bytes, "available_bytes": self.available_bytes,
                "estimate": self.estimate.to_dict()}


def estimate_memory(
    shape: ModelShape, ctx: int, parallel: int = 1, kv_type: str = "f16", batch: int = DEFAULT_BATCH,
    flash_attention: bool | None = None, cells: int | None = None,
) -> MemoryEstimate:
    """The memory a model takes loaded by lokal with ``parallel`` slots of ``ctx`` tokens.
    ``flash_attention`` None: whether this install's llama.cpp runs it (lokal's own build does).
    ``cells``: a shared KV pool's cells (``ContextShape.n_ctx``), which one ubatch also attends
    over; None: one stream of ``ctx`` cells per slot."""
    if flash_attention is None:
        flash_attention = _flash_attention()
    if kv_type not in KV_TYPE_BYTES:
        raise EstimateError(f"unknown KV cache type {kv_type!r} (one of {', '.join(KV_TYPE_BYTES)})")
    if ctx < 1 or parallel < 1 or (cells is not None and cells < 1):
        raise EstimateError("context, parallel slots and KV cells must be at least 1")
    per_token = kv_bytes_per_token(shape.facts, kv_type)
    if per_token is None:
        raise EstimateError(f"{shape.name}: the GGUF does not state layers and heads; cannot size its KV cache")
    kv_cells = ctx * parallel if cells is None else cells
    attended = ctx if cells is None else cells  # one slot's stream, or the whole shared pool
    ubatch = min(batch, kv_cells)
    heads = shape.facts.head_count or 1
    if flash_attention:
        extra = ubatch * (shape.facts.embedding_length or 0) * ACTIVATION_FLOATS_PER_DIM * 4
    else:
        extra = int(COMPUTE_SCORES_FACTOR * ubatch * attended * heads * 4)  # f32 scores of one ubatch
    return MemoryEstimate(
        model=shape.name,
        ctx=ctx,
        parallel=parallel,
        kv_type=kv_type,
        batch=batch,
        weights=shape.weights_bytes,
        kv_cache=per_token * kv_cells,
        compute=extra + COMPUTE_BASE_BYTES,
        overhead=OVERHEAD_BASE_BYTES + OVERHEAD_PER_VOCAB_TOKEN * shape.n_vocab,
    )


def classify(needed: int, available: int) -> str:
    """fits below 70 % of the available memory, tight up to 100 %, else wont_fit."""
    if needed <= TIGHT_SHARE * available:
        return "fits"
    if needed <= available:
        return "tight"
    return "wont_fit"


def _flash_attention() -> bool:
    from lokal.engine.llama_model import batch_invariant_flash_attention

    return batch_invariant_flash_attention()


def fit_for(
    model: Any,
    ctx_size: int = 4096,
    available_bytes: int | None = None,
    *,
    parallel: int = 1,
    kv_type: str = "f16",
    home: Path | None = None,
) -> Fit:
    """Will ``model`` (anything :func:`model_shape` takes) fit in ``available_bytes`` (RAM
    available now when None) with ``parallel`` slots of ``ctx_size`` tokens? Used by ``lokal
    pull``, ``lokal advise`` and the web UI's badge."""
    if available_bytes is None:
        import psutil

        available_bytes = int(psutil.virtual_memory().available)
    estimate = estimate_memory(model_shape(model, home), ctx_size, parallel, kv_type)
    return Fit(classify(estimate.total, available_bytes), estimate.total, available_bytes, estimate)


# ---- sources ---------------------------------------------------------------------------------
def model_shape(model: Any, home: Path | None = None) -> ModelShape:
    """Size facts for a ModelShape, a Manifest, a path, a URL, an hf.co name, a store or catalog
    name (``home`` is the store), or a generic size (``7b``, ``7b:q8_0``)."""
    from lokal.store.manifest import Manifest

    if isinstance(model, ModelShape):
        return model
    if isinstance(model, Manifest):
        if home is not None:
            from lokal.store.model_store import ModelStore

            path = ModelStore(home).blob_path(model.digest)
            if path.is_file():
                return shape_from_file(path, model.name, "store")
        return _shape_from_facts(model.name, model.facts, model.size, "store")
    if isinstance(model, Path):
        return shape_from_file(model, model.name, "file")
    text = str(model).strip()
    if text.startswith(("http://", "https://")):
        return shape_from_url(text)
    from lokal.store.sources.hf import is_hf_name

    if is_hf_name(text):
        return shape_from_hf(text)
    if text.lower().endswith(".gguf") or Path(text).is_file():
        return shape_from_file(Path(text), Path(text).name, "file")
    if home is not None:
        from lokal.store.errors import StoreError
        from lokal.store.model_store import ModelStore

        store = ModelStore(home)
        try:
            if store.exists(text):
                manifest = store.get(text)
                return shape_from_file(store.blob_path(manifest.digest), manifest.name, "store")
        except StoreError:
            pass
    from lokal.store.catalog import find_catalog_entry

    entry = find_catalog_entry(text)
    if entry is not None and entry.name in CATALOG_SHAPES:
        return _catalog_shape(entry.name)
    generic = generic_shape(text)
    if generic is not None:
        return generic
    raise EstimateError(f'cannot size "{text}": not in the store or the catalog, not a GGUF file, URL or size like 7b')


def shape_from_header(header: GgufHeader, name: str, source: str) -> ModelShape:
    """A shape from a parsed GGUF header: the weights are its tensors' bytes."""
    from lokal.store.gguf_facts import facts_from_header

    facts = facts_from_header(header)
    return ModelShape(name=name, facts=facts, weights_bytes=sum(t.n_bytes for t in header.tensors),
                      n_vocab=_n_vocab(facts), source=source,
                      tensor_bytes=tuple((t.name, t.n_bytes) for t in header.tensors))


def shape_from_file(path: Path, name: str, source: str = "file") -> ModelShape:
    from lokal.store.errors import InvalidGguf
    from lokal.store.gguf_header import read_gguf_header

    try:
        return shape_from_header(read_gguf_header(Path(path)), name, source)
    except InvalidGguf as e:
        raise EstimateError(f"{path} is not a valid GGUF file: {e}") from e


def shape_from_url(url: str, headers: dict[str, str] | None = None, client: httpx.Client | None = None) -> ModelShape:
    """A shape from a GGUF on a web server, reading only its header (HTTP range requests)."""
    header, _ = fetch_remote_header(url, headers=headers, client=client)
    return shape_from_header(header, url.rsplit("/", 1)[-1].split("?")[0], "remote")


def shape_from_hf(name: str) -> ModelShape:
    """``hf.co/owner/repo:quant``: the file the pull would pick, sized from its header alone."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    from lokal.store.errors import StoreError
    from lokal.store.sources.hf import HfSource, split_hf_name

    try:
        repo_id, selector = split_hf_name(name)
        file = HfSource(store=None).resolve(repo_id, selector)  # type: ignore[arg-type]  # resolve needs no store
    except StoreError as e:
        raise EstimateError(str(e)) from e
    url = hf_hub_url(file.repo_id, file.filename, revision=file.revision)
    header, _ = fetch_remote_header(url, headers=build_hf_headers(library_name="lokal"))
    return shape_from_header(header, f"{repo_id}/{file.filename}", "remote")


def fetch_remote_header(
    url: str, headers: dict[str, str] | None = None, client: httpx.Client | None = None
) -> tuple[GgufHeader, int]:
    """Read a remote GGUF's header with HTTP range requests, asking for more bytes only while the
    header goes on (256 KiB, then doubling). Returns the header and the bytes fetched. A server
    that ignores ``Range`` is refused rather than downloading the whole file."""
    import httpx

    from lokal.store.errors import InvalidGguf
    from lokal.store.gguf_header import TruncatedHeader, read_gguf_header_prefix

    own = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=30)
    prefix = b""
    file_size: int | None = None
    want = REMOTE_FIRST_BYTES
    try:
        while True:
            start, end = len(prefix), want - 1
            if file_size is not None:
                end = min(end, file_size - 1)
            with http.stream("GET", url, headers={**(headers or {}), "Range": f"bytes={start}-{end}"}) as r:
                if r.status_code != 206:
                    raise EstimateError(f"{url}: HTTP {r.status_code} to a range request (need 206 Partial Content)")
                file_size = _content_range_total(r.headers.get("content-range"), url)
                chunk = b"".join(r.iter_bytes())
            prefix += chunk[: end - start + 1]
            try:
                return read_gguf_header_prefix(prefix, file_size), len(prefix)
            except TruncatedHeader:
                if len(prefix) >= file_size or want >= REMOTE_MAX_HEADER or not chunk:
                    raise EstimateError(f"{url}: the GGUF header does not end within {len(prefix)} bytes") from None
                want *= 2
            except InvalidGguf as e:
                raise EstimateError(f"{url} is not a valid GGUF file: {e}") from e
    except httpx.HTTPError as e:
        raise EstimateError(f"{url}: {type(e).__name__}: {e}") from e
    finally:
        if own:
            http.close()


def generic_shape(text: str) -> ModelShape | None:
    """``7b``, ``7b:q4_k_m``, ``70B-Q8_0``: a representative model of that size and quantization."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*b(?:[:\-_ ]?(\w+))?", text.strip().lower())
    if not m:
        return None
    size = float(m.group(1))
    quant = (m.group(2) or "Q4_K_M").upper()
    if quant not in QUANT_BITS:
        raise EstimateError(f"unknown quantization {quant} (one of {', '.join(QUANT_BITS)})")
    nearest = min(GENERIC_ARCHS, key=lambda s: abs(s - size))
    arch, layers, heads, kv_heads, head_dim, embd, vocab = GENERIC_ARCHS[nearest]
    facts = GgufFacts(architecture="llama", name=f"{m.group(1)}B (like {arch})", parameter_count=int(size * 1e9),
                      quantization=quant, block_count=layers, head_count=heads, head_count_kv=kv_heads,
                      embedding_length=heads * head_dim, context_length=131072)
    return ModelShape(name=f"{m.group(1)}b:{quant.lower()}", facts=facts,
                      weights_bytes=int(size * 1e9 * QUANT_BITS[quant] / 8), n_vocab=vocab, source="generic")


def _catalog_shape(name: str) -> ModelShape:
    d = CATALOG_SHAPES[name]
    arch = d["architecture"]
    metadata: dict[str, Any] = {}
    if "key_length" in d:
        metadata = {f"{arch}.attention.key_length": d["key_length"],
                    f"{arch}.attention.value_length": d["value_length"]}
    facts = GgufFacts(architecture=arch, name=name, parameter_count=d["parameter_count"],
                      quantization=d["quantization"], context_length=d["context_length"],
                      embedding_length=d["embedding_length"], block_count=d["block_count"],
                      head_count=d["head_count"], head_count_kv=d["head_count_kv"], metadata=metadata)
    return ModelShape(name=name, facts=facts, weights_bytes=d["weights_bytes"], n_vocab=d["n_vocab"], source="catalog")


def _shape_from_facts(name: str, facts: GgufFacts, file_size: int, source: str) -> ModelShape:
    return ModelShape(name=name, facts=facts, weights_bytes=file_size, n_vocab=_n_vocab(facts), source=source)


def _n_vocab(facts: GgufFacts) -> int:
    tokens = facts.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, ArraySummary):
        return tokens.length
    if isinstance(tokens, list):
        return len(tokens)
    size = facts.metadata.get(f"{facts.architecture}.vocab_size")
    return size if isinstance(size, int) else 32000


def _content_range_total(value: str | None, url: str) -> int:
    """``bytes 0-262143/98362432`` -> 98362432."""
    m = re.fullmatch(r"bytes\s+\d+-\d+/(\d+)", (value or "").strip())
    if not m:
        raise EstimateError(f"{url}: no usable Content-Range in the answer ({value!r})")
    return int(m.group(1))
