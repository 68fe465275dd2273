"""Import a Hugging Face model published as safetensors: ``lokal import ./folder`` and
``lokal pull hf.co/owner/repo`` for a repository with no GGUF file.

llama.cpp's own ``convert_hf_to_gguf.py`` (:mod:`lokal.workshop.converter`) writes the GGUF into
the store's ``tmp/``, with the tokenizer and the chat template (``tokenizer_config.json``'s
``chat_template`` or ``chat_template.jinja``); the store then takes it like any imported file
(:meth:`ModelStore.import_file`: checked loadable, moved into ``blobs/``, manifest written last),
so a failure at any step leaves nothing in the store. What the GGUF cannot hold is said, not
dropped silently: sampling defaults from ``generation_config.json`` become the model's Modelfile
parameters where lokal has them, and everything else is listed in :attr:`ImportResult.notes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from math import prod
from pathlib import Path
from typing import Any

from lokal.config import Settings
from lokal.store.errors import StoreError
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import ModelfileError, parse_parameter
from lokal.store.names import parse_model_name
from lokal.store.progress import ByteProgress, ProgressCallback, PullProgress, ignore_progress
from lokal.store.pull import pull_model
from lokal.store.sources import hf as hf_source
from lokal.store.sources.hf import HfFile, HfSource, NoGgufFile, split_hf_name
from lokal.store.sources.pypi import die_with_parent, kill_group
from lokal.workshop.converter import INSTALL_HINT, ConverterMissing, LlamaCppConverter, find_converter
from lokal.workshop.quantize import QuantType, parse_quant_type, quantize_file

# lokal's name for an output type -> the converter's --outtype; bytes per weight, for the disk check
OUT_TYPES: dict[str, tuple[str, float]] = {
    "F16": ("f16", 2.0),
    "BF16": ("bf16", 2.0),
    "F32": ("f32", 4.0),
    "Q8_0": ("q8_0", 34 / 32),
}
DEFAULT_OUT_TYPE = "F16"
# Files a tokenizer can come in; the converter needs one of them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# Weights lokal refuses to read: Python pickles run code when loaded.
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# What a pull of a safetensors repository downloads: the weights, config, tokenizer and chat
# template, sentence-transformers' pooling, and the model card (the converter reads its licence and
# names from it); never pickles, ONNX exports or other formats.
HUB_FILES = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json", "README.md",
    *TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt",
    "chat_template.jinja", "chat_template.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling/config.json",
)
# generation_config.json's sampling defaults -> lokal's (Ollama's) Modelfile parameters
GENERATION_PARAMETERS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
}
# generation_config.json keys that are bookkeeping, or that the GGUF's tokenizer already carries
_GENERATION_BOOKKEEPING = frozenset({
    "_from_model_config", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
    "decoder_start_token_id", "use_cache", "output_attentions", "output_hidden_states", "return_dict_in_generate",
    "do_sample",
})
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MARGIN = 1.05  # metadata, the tokenizer, and 1-D tensors the converter keeps in F32
# tqdm's line while the converter writes: "Writing:  53%|█████▎    | 24.2M/45.6M [...]"
_WRITING = re.compile(r"Writing:.*?\|\s*([\d.]+)([kMGT]?)/([\d.]+)([kMGT]?)")
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_LOG_LINES_KEPT = 200
_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b.*:")  # a traceback's last line


class HfImportError(StoreError):
    """A Hugging Face model that lokal cannot import; the message says why, in one line."""


@dataclass(frozen=True)
class ImportResult:
    """The stored model, and what of the Hugging Face model it does not carry."""

    manifest: Manifest
    notes: list[str] = field(default_factory=list)  # what the stored model does not carry over
    warnings: list[str] = field(default_factory=list)  # what llama.cpp's converter warned of (its WARNING lines)


def import_hf_folder(
    store: ModelStore,
    folder: Path | str,
    name: str,
    settings: Settings,
    *,
    out_type: str = DEFAULT_OUT_TYPE,
    progress: ProgressCallback | None = None,
    source: str | None = None,
) -> ImportResult:
    """Convert the Hugging Face model in ``folder`` (``config.json``, ``*.safetensors``, its
    tokenizer) to a GGUF of ``out_type`` and store it as ``name``. The converter writes F16, BF16,
    F32 and Q8_0; any other type of ``lokal quantize`` (Q4_K_M, …) is quantized from its F16.

    Raises :class:`HfImportError` (not a model folder, pickle-only weights, no tokenizer, an
    architecture llama.cpp's converter does not support, not enough disk, the converter failing),
    :class:`QuantizeError` (an unknown type, the quantizer failing), :class:`ConverterMissing`,
    :class:`InvalidModelName` or :class:`InvalidGguf`; nothing is stored then.
    """
    report = progress or ignore_progress
    model = parse_model_name(name)  # a bad name fails before minutes of conversion
    outtype, bytes_per_weight, quantized = _out_type(out_type)
    folder = Path(folder).expanduser().resolve()
    config = _check_folder(folder)
    parameters, notes = generation_parameters(folder)
    notes += _folder_notes(folder, config)
    needed = int(_weight_count(folder) * bytes_per_weight * _MARGIN)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    _check_disk(store.tmp_dir, needed, f"convert {folder}")
    converter = find_converter(settings)

    architecture = _architectures(config)[0]
    report(PullProgress(f"converting {architecture} to GGUF {outtype.upper()}"))
    with contextlib.ExitStack() as partials:
        # locked partial files: a killed import's are removed by the store's clean_tmp
        gguf, _ = partials.enter_context(store.partial_file())
        warnings = _convert(converter, folder, gguf, outtype, report)
        if quantized is not None:  # a type only llama.cpp's quantizer writes: from the F16 file
            f16 = gguf
            gguf, _ = partials.enter_context(store.partial_file())
            quantize_file(f16, gguf, quantized, threads=settings.threads, progress=report,
                          status=f"quantizing F16 model to {quantized.name}")
        report(PullProgress("verifying the GGUF"))
        manifest = store.import_file(gguf, model, source=source or f"file:{folder}", parameters=parameters)
    if manifest.kind == "chat" and not manifest.facts.chat_template:
        notes.append("no chat template (tokenizer_config.json or chat_template.jinja): give one with a Modelfile "
                     "TEMPLATE, or chats use a plain fallback")
    report(PullProgress("success"))
    return ImportResult(manifest, notes, warnings)


def pull_or_convert(
    store: ModelStore,
    name: str,
    settings: Settings,
    progress: ProgressCallback | None = None,
    *,
    hf_endpoint: str | None = None,
    out_type: str = DEFAULT_OUT_TYPE,
) -> ImportResult:
    """:func:`pull_model`, and for an ``hf.co/`` repository with no GGUF file its safetensors,
    downloaded and converted by :func:`import_hf_folder`."""
    try:
        return ImportResult(pull_model(store, name, progress, hf_endpoint=hf_endpoint))
    except NoGgufFile:
        return pull_safetensors(store, name, settings, progress, hf_endpoint=hf_endpoint, out_type=out_type)


def pull_safetensors(
    store: ModelStore,
    name: str,
    settings: Settings,
    progress: ProgressCallback | None = None,
    *,
    hf_endpoint: str | None = None,
    out_type: str = DEFAULT_OUT_TYPE,
) -> ImportResult:
    """Download the safetensors, config and tokenizer of ``hf.co/<owner>/<repo>`` and import them
    as model ``name``. Downloads resume (``tmp/pull-<name>/files``, as GGUF pulls do) and LFS
    files are checked against the Hub's sha256."""
    report = progress or ignore_progress
    repo_id, selector = split_hf_name(name)
    if selector is not None:
        raise HfImportError(f"hf.co/{repo_id} has no .gguf file, so nothing is called {selector!r} there; "
                            f"pull hf.co/{repo_id} to convert its safetensors")
    model = parse_model_name(name)
    bytes_per_weight = _out_type(out_type)[1]  # an unknown type fails before anything is downloaded
    find_converter(settings)  # before gigabytes are downloaded for nothing
    source = HfSource(store, endpoint=hf_endpoint)
    work = store.pull_dir(model)
    lock = store.pull_lock(model, report)
    try:
        report(PullProgress("pulling manifest"))
        wanted = [f for f in source.repo_files(repo_id) if _hub_file_wanted(f.filename)]
        others = [f for f in wanted if not f.filename.endswith(".safetensors")]
        weights = [f for f in wanted if f.filename.endswith(".safetensors")]
        if not weights:
            raise HfImportError(f"hf.co/{repo_id} has neither a .gguf file nor .safetensors weights to convert")
        folder = work / "model" / repo_id.split("/")[1]  # the converter names the model after its folder
        shutil.rmtree(folder.parent, ignore_errors=True)
        for file in others:  # small: the index among them says which weight files the model is
            _fetch(source, file, work, folder, report)
        indexed = _indexed_shards(folder)
        if indexed is not None:  # not the copies some repositories add (consolidated.safetensors)
            weights = [f for f in weights if f.filename in indexed]
        # The weights' count is not known before their headers are read: 2 bytes each (F16, BF16)
        converted = int(sum(f.size for f in weights) / 2 * bytes_per_weight * _MARGIN)
        _check_disk(work, sum(f.size for f in weights) + converted, f"download and convert hf.co/{repo_id}")
        for file in weights:
            _fetch(source, file, work, folder, report)
        try:
            result = import_hf_folder(
                store, folder, str(model), settings, out_type=out_type, progress=report, source=f"hf.co/{repo_id}"
            )
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)  # links: the downloads in files/ stay until it succeeds
        shutil.rmtree(work, ignore_errors=True)
        return result
    except OSError as e:  # disk full, permissions: one line for the user (the downloads are kept)
        raise HfImportError(f"cannot pull {model}: {e}") from e
    finally:
        lock.release(remove=True)


def _hub_file_wanted(filename: str) -> bool:
    """Whether a pull of a safetensors repository downloads ``filename``: the top-level files of
    :data:`HUB_FILES`, and the few in folders it names (``1_Pooling/config.json``)."""
    return filename in HUB_FILES or ("/" not in filename and any(fnmatch(filename, p) for p in HUB_FILES))


def _fetch(source: HfSource, file: HfFile, work: Path, folder: Path, report: ProgressCallback) -> None:
    """Download ``file`` (resuming) and link it into ``folder`` under its own name."""
    digest = f"sha256:{file.sha256}" if file.sha256 else None
    path = source.download(file, work, ByteProgress(report, "downloading", file.size, digest))
    target = folder / file.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(path, target)  # the same filesystem: the converter reads it under its own name


def generation_parameters(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Modelfile parameters from ``folder/generation_config.json``'s sampling defaults (only when it
    samples: ``do_sample`` true), and notes on what is not carried over."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}, []
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {}, [f"generation_config.json is not readable JSON ({e}); its defaults are not carried over"]
    if not isinstance(config, dict):
        return {}, ["generation_config.json is not a JSON object; its defaults are not carried over"]
    parameters: dict[str, Any] = {}
    notes: list[str] = []
    sampling = {k: v for k, v in config.items() if k in GENERATION_PARAMETERS}
    if sampling and config.get("do_sample") is not True:
        notes.append(f"generation_config.json: {', '.join(sorted(sampling))} not carried over, as do_sample is not "
                     "true there (transformers decodes greedily)")
    elif sampling:
        for key, value in sampling.items():
            try:
                parameters[GENERATION_PARAMETERS[key]] = parse_parameter(GENERATION_PARAMETERS[key], value)
            except ModelfileError as e:
                notes.append(f"generation_config.json: {key} {value!r} not carried over ({e})")
    others = sorted(set(config) - set(GENERATION_PARAMETERS) - _GENERATION_BOOKKEEPING)
    if others:
        notes.append(f"generation_config.json: {', '.join(others)} not carried over (no Modelfile parameter)")
    return parameters, notes


def _out_type(out_type: str) -> tuple[str, float, QuantType | None]:
    """The converter's ``--outtype``, the bytes per weight the import writes in all (for the disk
    check), and the type llama.cpp's quantizer makes of the converter's F16 (None: no quantizing)."""
    key = out_type.strip().upper()
    if key in OUT_TYPES:
        outtype, size = OUT_TYPES[key]
        return outtype, size, None
    quantized = parse_quant_type(key)  # QuantizeError listing the types it knows
    return "f16", OUT_TYPES["F16"][1] + quantized.bits_per_weight / 8, quantized


def _check_folder(folder: Path) -> dict[str, Any]:
    """``folder``'s config.json, after checking that it is a Hugging Face model lokal can convert."""
    if not folder.is_dir():
        raise HfImportError(f"{folder}: no such folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HfImportError(f"{folder} is not a Hugging Face model folder: it has no config.json") from None
    except (OSError, ValueError) as e:
        raise HfImportError(f"{folder}/config.json is not readable JSON ({e})") from None
    if not isinstance(config, dict) or not _architectures(config):
        raise HfImportError(f"{folder}/config.json names no model architecture (\"architectures\")")
    _check_shards(folder)
    if not any(_weight_files(folder)):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
        if pickles:
            raise HfImportError(f"{folder} has only PyTorch pickle weights ({', '.join(pickles)}); lokal imports "
                                ".safetensors only, as loading a pickle can run code")
        raise HfImportError(f"{folder} has no model weights (*.safetensors)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise HfImportError(f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}); the GGUF needs the "
                            "model's tokenizer")
    return config


def _architectures(config: dict[str, Any]) -> list[str]:
    text_config = config.get("text_config")
    found = config.get("architectures") or (text_config.get("architectures") if isinstance(text_config, dict) else None)
    return [str(a) for a in found] if isinstance(found, list) else []


def _weight_files(folder: Path) -> Iterator[Path]:
    """The safetensors files the converter reads: those the index lists, else every one."""
    indexed = _indexed_shards(folder)
    found = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return (p for p in found if indexed is None or p.name in indexed)


def _indexed_shards(folder: Path) -> set[str] | None:
    """The weight files ``model.safetensors.index.json`` lists; None without an index."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        return {str(shard) for shard in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HfImportError(f"{index} is not a safetensors index ({e})") from None


def _check_shards(folder: Path) -> None:
    missing = sorted(s for s in _indexed_shards(folder) or () if not (folder / s).is_file())
    if missing:
        raise HfImportError(f"{folder} lacks weight files its index lists: {', '.join(missing[:5])}")


def _weight_count(folder: Path) -> int:
    """How many weights the safetensors files hold (from their headers; nothing else is read)."""
    total = 0
    for path in _weight_files(folder):
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            total += sum(prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise HfImportError(f"{path} is not a safetensors file ({e})") from None
    return total


def _folder_notes(folder: Path, config: dict[str, Any]) -> list[str]:
    notes = []
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        notes.append(f"ignored {', '.join(pickles)} (pickles): the weights come from the .safetensors files")
    if config.get("auto_map"):
        notes.append("config.json's auto_map (custom modelling code) is not run: the model is converted as "
                     f"llama.cpp's {_architectures(config)[0]}")
    dense = sorted(p.name for p in folder.glob("[0-9]_Dense"))
    if dense:
        notes.append(f"sentence-transformers' {', '.join(dense)} projection is not carried over")
    return notes


def _check_disk(folder: Path, needed: int, what: str) -> None:
    free = hf_source.disk_free(folder)
    if needed + hf_source.DISK_RESERVE > free:
        raise HfImportError(f"not enough disk space to {what}: about {needed} bytes needed, {free} bytes free in "
                            f"{folder}")


def _convert(
    converter: LlamaCppConverter, folder: Path, dest: Path, outtype: str, report: ProgressCallback
) -> list[str]:
    """Run ``convert_hf_to_gguf.py`` on ``folder`` into ``dest``, reporting the bytes it writes,
    and return its warnings; raises :class:`HfImportError` naming what went wrong."""
    cmd = converter.command(converter.hf_script, str(folder), "--outfile", str(dest), "--outtype", outtype)
    log: deque[str] = deque(maxlen=_LOG_LINES_KEPT)
    warnings: list[str] = []
    writing: ByteProgress | None = None
    proc = subprocess.Popen(
        die_with_parent(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=converter.environment(),
        cwd=converter.folder, start_new_session=True,  # its own process group: killed as one on an interrupt
    )
    assert proc.stdout is not None
    try:
        pending = b""
        while chunk := os.read(proc.stdout.fileno(), 65536):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                if m := _WRITING.search(line):  # tqdm redraws this line many times: not logged
                    done, total = _bytes(m.group(1), m.group(2)), _bytes(m.group(3), m.group(4))
                    writing = writing or ByteProgress(report, "converting", total)
                    writing(done, force=done == total)
                    continue
                log.append(line)
                if line.startswith("WARNING:") and len(warnings) < 10:
                    warning = line.split(":", 2)[-1].strip()
                    if warning not in warnings:
                        warnings.append(warning)
        proc.wait()
    finally:
        if proc.poll() is None:
            kill_group(proc)
    if proc.returncode != 0:
        raise _conversion_error(folder, list(log))
    return warnings


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def _conversion_error(folder: Path, log: list[str]) -> StoreError:
    """One line saying why the converter failed, from its log."""
    text = "\n".join(log)
    if m := re.search(r"Model (\S+) is not supported", text):
        return HfImportError(f"{folder}: architecture {m.group(1)} is not supported by llama.cpp's converter "
                             "(convert_hf_to_gguf.py of the llama-cpp-python lokal is built on)")
    if "BPE pre-tokenizer was not recognized" in text:
        return HfImportError(f"{folder}: its tokenizer's pre-tokenizer is not one llama.cpp knows "
                             "(convert_hf_to_gguf.py's get_vocab_base_pre)")
    if m := re.search(r"No module named '([^']+)'", text):
        return ConverterMissing(f"llama.cpp's converter needs {m.group(1)}, which is not installed; install it "
                                f"with: {INSTALL_HINT}")
    if "No space left on device" in text:
        return HfImportError(f"not enough disk space to convert {folder} (the converter ran out)")
    errors = [line for line in log if _EXCEPTION.match(line) or line.startswith("ERROR:")]
    last = (errors or log or ["no output"])[-1]
    return HfImportError(f"llama.cpp's converter failed on {folder}: {last[:300]}")
