"""LoRA adapters in GGUF form: checking one against the model it will be applied to.

The checks are llama.cpp's own (``llama_adapter_lora_init``), made from the two files' headers
before anything is stored, so that ``lokal create`` refuses an adapter that would fail to load
at its first request, with one message that says why."""

from __future__ import annotations

from pathlib import Path

from lokal.store.errors import InvalidGguf
from lokal.store.gguf_header import GgufHeader, read_gguf_header


class InvalidAdapter(InvalidGguf):
    """A file that is not a LoRA adapter for the model it is meant for."""


def check_adapter(adapter: Path, base: Path, what: str) -> None:
    """Raise :class:`InvalidAdapter` unless ``adapter`` is a GGUF LoRA adapter (``general.type``
    adapter, ``adapter.type`` lora) for ``base``'s architecture whose every tensor pair matches a
    base tensor's shape. ``what`` starts the message (``ADAPTER ./caps.gguf``)."""
    try:
        header = read_gguf_header(adapter)
    except InvalidGguf as exc:
        raise InvalidAdapter(f"{what}: not a GGUF file ({exc})") from None
    meta = header.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        kind = meta.get("adapter.type") if meta.get("general.type") == "adapter" else meta.get("general.type")
        raise InvalidAdapter(f"{what}: not a LoRA adapter (the GGUF is a {kind or 'model'}, not general.type "
                             "adapter with adapter.type lora); convert a PEFT adapter with convert_lora_to_gguf.py")
    base_header = read_gguf_header(base)
    arch, base_arch = meta.get("general.architecture"), base_header.metadata.get("general.architecture")
    if arch != base_arch:
        raise InvalidAdapter(f"{what}: a LoRA adapter for {arch} models, but the base model is {base_arch}")
    problem = _shape_problem(header, base_header)
    if problem is not None:
        raise InvalidAdapter(f"{what}: does not fit the base model: {problem}")


def _shape_problem(adapter: GgufHeader, base: GgufHeader) -> str | None:
    """What llama.cpp would refuse about the adapter's tensors, or None."""
    shapes = {t.name: t.shape for t in base.tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in adapter.tensors:
        name, _, part = tensor.name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            continue  # llama.cpp ignores other tensors
        pairs.setdefault(name, {})[part] = tensor.shape
    if not pairs:
        return "it has no lora_a/lora_b tensors"
    for name, pair in pairs.items():
        if len(pair) != 2:
            return f"tensor {name} has only {', '.join(pair)}"
        target = shapes.get(name)
        if target is None:
            return f"the base model has no tensor {name}"
        a, b = pair["lora_a"], pair["lora_b"]
        if len(a) < 2 or len(b) < 2 or len(target) < 2:
            return f"tensor {name} is not a matrix"
        if name.endswith("token_embd.weight"):  # A and B flipped (llama.cpp's llm_build_inp_embd)
            fits = target[0] == b[1] and target[1] == a[1]
        else:
            fits = target[0] == a[0] and target[1] == b[1] and a[1] == b[0]
        if not fits:
            return f"tensor {name} is {list(target)} in the base model, its LoRA pair is {list(a)} and {list(b)}"
    return None
