"""``quantize_model``: a stored model's weights in another llama.cpp type, stored as a new model.

llama.cpp's quantizer (``llama_model_quantize``) runs in a process of its own
(:mod:`lokal.workshop.quantize_worker`), writing into a locked partial file under the store's
``tmp/``; the file becomes a blob only once it is whole, verified and loadable, and the new
manifest (the source's template, parameters, system prompt, messages, kind and license, with the
new weights) is written after it. A failure at any point (an unknown type, a refused
requantization, a full disk, a crash of llama.cpp) leaves the store as it was.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lokal.store.create import collect_unused_blob
from lokal.store.errors import ModelNotFound, StoreError
from lokal.store.gguf_header import read_gguf_header
from lokal.store.manifest import Manifest, utc_now
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name
from lokal.store.progress import ProgressCallback, PullProgress, ignore_progress
from lokal.store.sources.pypi import die_with_parent


class QuantizeError(StoreError):
    """The model cannot be quantized as asked; the message says why and what to do."""


@dataclass(frozen=True)
class QuantType:
    """A llama.cpp file type lokal quantizes to: its name (``Q4_K_M``), ``llama_ftype`` value and
    nominal bits per weight (llama.cpp's quantize README, for an 8B model: used to check the disk)."""

    name: str
    ftype: int
    bits_per_weight: float


# llama.cpp's LLAMA_FTYPE_* (include/llama.h); the I-quants below 4 bits need an importance matrix,
# which lokal does not compute, so they are not offered.
QUANT_TYPES: dict[str, QuantType] = {
    t.name: t
    for t in (
        QuantType("F32", 0, 32.0),
        QuantType("F16", 1, 16.0),
        QuantType("BF16", 32, 16.0),
        QuantType("Q8_0", 7, 8.50),
        QuantType("Q6_K", 18, 6.56),
        QuantType("Q5_K_M", 17, 5.70),
        QuantType("Q5_K_S", 16, 5.57),
        QuantType("Q5_1", 9, 6.0),
        QuantType("Q5_0", 8, 5.5),
        QuantType("Q4_K_M", 15, 4.89),
        QuantType("Q4_K_S", 14, 4.67),
        QuantType("Q4_1", 3, 5.0),
        QuantType("Q4_0", 2, 4.5),
        QuantType("IQ4_NL", 25, 4.68),
        QuantType("IQ4_XS", 30, 4.46),
        QuantType("Q3_K_L", 13, 4.30),
        QuantType("Q3_K_M", 12, 4.00),
        QuantType("Q3_K_S", 11, 3.64),
        QuantType("Q2_K", 10, 3.16),
    )
}
UNQUANTIZED = frozenset({"F32", "F16", "BF16"})
QUANTIZABLE_KINDS = frozenset({"chat", "embedding", "reranker"})
DISK_MARGIN = 1.15  # types mix: K-quants keep some tensors in wider types than their nominal bits
DISK_SLACK_BYTES = 64 << 20


def parse_quant_type(text: str) -> QuantType:
    """``q4_k_m``, ``Q4_K_M`` … as a :class:`QuantType`; :class:`QuantizeError` listing the valid ones."""
    found = QUANT_TYPES.get(text.strip().upper())
    if found is None:
        raise QuantizeError(f'unknown quantization type "{text[:32]}"; choose one of {", ".join(QUANT_TYPES)}')
    return found


def quantized_name(source: str, qtype: QuantType) -> str:
    """``smollm2:135m`` → ``smollm2:135m-q4_k_m`` (a tag that already ends in a type has it replaced)."""
    model = parse_model_name(source)
    tag = model.tag
    for known in QUANT_TYPES:
        if tag.lower().endswith("-" + known.lower()):
            tag = tag[: -len(known) - 1]
            break
    return str(parse_model_name(f"{model.name}:{tag}-{qtype.name.lower()}"))


def estimated_size(gguf: Path, qtype: QuantType) -> int:
    """About how many bytes the GGUF at ``gguf`` takes in ``qtype``: the metadata and 1-D tensors
    (norms, biases: llama.cpp keeps them in F32) as they are, every matrix at the type's bits."""
    header = read_gguf_header(gguf)
    kept = sum(t.n_bytes for t in header.tensors if len(t.shape) < 2)
    weights = sum(t.n_elements for t in header.tensors if len(t.shape) >= 2)
    return header.data_offset + kept + int(weights * qtype.bits_per_weight / 8)


def quantize_model(
    store: ModelStore,
    source: str,
    qtype: QuantType | str,
    *,
    name: str | None = None,
    allow_requantize: bool = False,
    threads: int = 4,
    progress: ProgressCallback | None = None,
    warn: Callable[[str], None] | None = None,
) -> Manifest:
    """Quantize stored model ``source`` to ``qtype`` as model ``name`` (default
    :func:`quantized_name`) and return its manifest.

    A source that is already quantized is requantized only with ``allow_requantize`` (``warn`` is
    told what that costs). A model of that name made from these same weights in this type is
    returned as it is; any other is replaced, as ``lokal create`` replaces one. Raises
    :class:`QuantizeError` (unknown type, refused requantization, not enough disk, llama.cpp
    failed), :class:`ModelNotFound` or :class:`InvalidModelName`; the store is then unchanged.
    """
    report = progress or ignore_progress
    qt = parse_quant_type(qtype) if isinstance(qtype, str) else qtype
    src = store.get(source)
    target = str(parse_model_name(name)) if name else quantized_name(src.name, qt)
    check_source(src, qt, allow_requantize, warn)
    origin = f"quantize:{qt.name} {src.name}@{src.digest}"
    existing = _existing(store, target)
    if existing is not None and existing.source == origin:
        report(PullProgress("success"))
        return existing  # made before from the same weights: quantizing is deterministic
    gguf = store.gguf_path(src.name)
    _check_disk(store, gguf, qt)
    status = f"quantizing {src.facts.quantization or '?'} model to {qt.name}"  # Ollama's words
    with store.partial_file() as (partial, _):  # locked: clean_tmp of another process leaves it alone
        quantize_file(gguf, partial, qt, allow_requantize=allow_requantize, threads=threads, progress=report,
                      status=status)
        report(PullProgress("verifying sha256 digest"))
        digest, facts = store.add_gguf(partial)  # moved into blobs/ once hashed and checked loadable
    manifest = src.model_copy(update={
        "name": target, "digest": digest, "size": store.blob_path(digest).stat().st_size, "facts": facts,
        "source": origin, "modified_at": utc_now(),
    })
    report(PullProgress("writing manifest"))
    try:
        store.write_manifest(manifest)  # atomic: a model of that name stays whole until the rename
    except BaseException:
        collect_unused_blob(store, digest)
        raise
    if existing is not None and existing.digest != digest:
        collect_unused_blob(store, existing.digest)
    report(PullProgress("success"))
    return manifest


def check_source(
    src: Manifest, qt: QuantType, allow_requantize: bool, warn: Callable[[str], None] | None = None
) -> None:
    """:class:`QuantizeError` unless model ``src`` can be quantized to ``qt``; ``warn`` is told
    what requantizing an already quantized model costs."""
    if src.format != "gguf" or src.kind not in QUANTIZABLE_KINDS:
        raise QuantizeError(f"{src.name} is a {src.kind} model; only language and embedding GGUF models are quantized")
    current = (src.facts.quantization or "").upper()
    if current == qt.name:
        raise QuantizeError(f"{src.name} is already {qt.name}")
    if current in UNQUANTIZED:
        return
    if not allow_requantize:
        raise QuantizeError(
            f"{src.name} is already quantized ({current or 'unknown type'}); quantizing it again adds to the error "
            "of the first quantization. Quantize the F16 or F32 original, or allow requantizing "
            "(lokal quantize --allow-requantize)"
        )
    if warn is not None:
        wider = QUANT_TYPES[current].bits_per_weight < qt.bits_per_weight if current in QUANT_TYPES else False
        cost = (f"{qt.name} cannot bring back what {current} lost: the result is no better than {current}, only larger"
                if wider else f"the error of {qt.name} adds to that of {current}")
        warn(f"requantizing {src.name} from {current}: {cost}")


def _check_disk(store: ModelStore, gguf: Path, qt: QuantType) -> None:
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    needed = int(estimated_size(gguf, qt) * DISK_MARGIN) + DISK_SLACK_BYTES
    free = shutil.disk_usage(store.tmp_dir).free
    if free < needed:
        raise QuantizeError(
            f"not enough disk space to quantize to {qt.name}: about {needed / 1e9:.2f} GB needed in "
            f"{store.tmp_dir}, {free / 1e9:.2f} GB free"
        )


def quantize_file(
    source: Path, output: Path, qtype: QuantType | str, *, allow_requantize: bool = False, threads: int = 4,
    progress: ProgressCallback | None = None, status: str | None = None,
) -> None:
    """Write the GGUF ``source`` quantized to ``qtype`` into ``output`` with llama.cpp's quantizer,
    run by :mod:`lokal.workshop.quantize_worker`; each tensor is reported as ``completed`` of
    ``total`` under ``status``. :class:`QuantizeError` with llama.cpp's reason when it fails (then
    ``output`` may hold part of a file: write into a partial file, as :func:`quantize_model` does)."""
    qt = parse_quant_type(qtype) if isinstance(qtype, str) else qtype
    report = progress or ignore_progress
    status = status or f"quantizing to {qt.name}"
    argv = [sys.executable, "-m", "lokal.workshop.quantize_worker", str(source), str(output), str(qt.ftype),
            "1" if allow_requantize else "0", str(max(1, threads))]
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a long error cannot block the worker
        # killed with this process, even by SIGKILL: no orphan writes on into a partial file nobody holds
        proc = subprocess.Popen(die_with_parent(argv), stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            report(PullProgress(status))
            for line in proc.stdout:
                done, _, total = line.decode().partition(" ")
                report(PullProgress(status, total=int(total), completed=int(done)))
            code = proc.wait()
        except BaseException:  # Ctrl-C, or a client that went away: stop llama.cpp now
            proc.kill()
            proc.wait()
            raise
        errors.seek(0)
        said = errors.read().decode("utf-8", "replace")
    if code != 0:
        raise QuantizeError(f"llama.cpp could not quantize {source.name} to {qt.name}: {_last_error(said, code)}")


def _last_error(stderr: str, code: int) -> str:
    """llama.cpp's reason in one line ("failed to quantize: <why>"), else how the process ended."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        match = re.search(r"failed to quantize: (.*)", line)
        if match:
            return match.group(1)
    if lines:
        return lines[-1][:300]
    return f"the quantizer exited with code {code}" if code > 0 else f"the quantizer was killed by signal {-code}"


def _existing(store: ModelStore, name: str) -> Manifest | None:
    try:
        return store.get(name)
    except ModelNotFound:
        return None
