"""Which layers of a model go to the GPUs: the one offload plan advise, the runtime and ``ps`` use.

llama.cpp's rules, mirrored so that the plan's bytes are where llama.cpp puts them
(``llama_model::load_tensors``): the input layer (token embeddings) always stays on the CPU;
``n_gpu_layers`` = k puts the last k repeating layers on GPUs, and k = n_layer + 1 the output layer
too; layer ``il`` goes to the first GPU whose cumulative share of the tensor split exceeds
``(il - first_gpu_layer) / k``; with ``offload_kqv`` each layer's KV cache lives with the layer.
Each GPU that holds layers also holds a compute buffer (lokal's estimate of it, counted in full on
each: conservative). ``VRAM_MARGIN_BYTES`` of each GPU's free memory is left alone for the CUDA
context, cuBLAS workspaces and fragmentation (llama.cpp's own ``--fit`` keeps the same 1 GiB).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lokal.advise.hardware import Gpu
from lokal.advise.memory import MemoryEstimate, ModelShape
from lokal.engine.devices import gpu_offload_supported

__all__ = ["gpu_offload_supported"]  # re-exported: advise and the runtime plan with it

if TYPE_CHECKING:
    from lokal.engine.llama_model import Offload

VRAM_MARGIN_BYTES = 1 << 30
VERDICTS = ("gpu", "partial", "cpu")
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")
_OUTPUT_TENSORS = ("output.weight", "output_norm.weight", "output_norm.bias", "output.bias")


@dataclass(frozen=True)
class LayerBytes:
    """A model's weights by where llama.cpp places them."""

    layers: tuple[int, ...]  # each repeating layer (blk.N.*)
    input: int  # token embeddings and the other tensors of the input layer: always on the CPU
    output: int  # the output layer on a GPU (a copy of the token embeddings when the file ties them)
    output_host: int  # the output layer left on the CPU (0 when tied: it reads the embeddings in place)


@dataclass(frozen=True)
class OffloadPlan:
    """Where a model goes: ``gpu_layers`` for llama.cpp (``n_layers`` + 1 puts the output layer on
    the GPU too), each GPU's bytes (in the order of the GPUs planned with) and the host's."""

    gpu_layers: int
    n_layers: int
    device_bytes: tuple[int, ...]
    host_bytes: int
    tensor_split: tuple[float, ...]
    main_gpu: int
    verdict: str  # gpu | partial | cpu
    description: str  # "fits on GPU", "partial: 20 of 32 layers on GPU", "CPU only: no GPU"
    fits: bool = True  # every GPU's bytes within its free memory less the margin

    @property
    def vram_bytes(self) -> int:
        return sum(self.device_bytes)

    @property
    def total_bytes(self) -> int:
        return self.host_bytes + self.vram_bytes

    @property
    def size_vram(self) -> int:
        """VRAM as Ollama's ``size_vram`` tells it: the whole model when every layer is on GPUs (what
        stays in RAM, the input embeddings and the vocabulary, is not told apart, as in ``ollama
        ps``: "100% GPU"), else the GPUs' bytes."""
        return self.total_bytes if self.verdict == "gpu" else self.vram_bytes

    def offload(self) -> Offload:
        """The engine's load parameters for this plan."""
        from lokal.engine.llama_model import Offload

        if self.gpu_layers == 0:
            return Offload()
        return Offload(gpu_layers=self.gpu_layers, tensor_split=self.tensor_split, main_gpu=self.main_gpu)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "description": self.description, "gpu_layers": self.gpu_layers,
                "n_layers": self.n_layers, "device_bytes": list(self.device_bytes), "host_bytes": self.host_bytes,
                "vram_bytes": self.vram_bytes, "tensor_split": list(self.tensor_split), "fits": self.fits}


def parse_gpu_layers(value: object) -> int | None:
    """``--gpu-layers``: "auto" (None) or a layer count (``n_layer + 1`` or more: every layer
    and the output). ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"gpu_layers must be auto or a number of layers, not {value!r}")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("", "auto"):
            return None
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"gpu_layers must be auto or a number of layers, not {value!r}") from None
    if n < 0:
        raise ValueError(f"gpu_layers must be auto or at least 0, not {n}")
    return n


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """``--tensor-split 3,1``: each GPU's share of the offloaded layers (in llama.cpp's device
    order); empty: by free memory. ValueError for a negative share or all zeros."""
    if not text.strip():
        return ()
    try:
        shares = tuple(float(part) for part in text.replace("/", ",").split(","))
    except ValueError:
        raise ValueError(f"tensor_split must be numbers separated by commas, like 3,1 (got {text!r})") from None
    if any(s < 0 or s != s for s in shares) or not any(shares):
        raise ValueError(f"tensor_split needs shares of at least 0 and one above 0 (got {text!r})")
    return shares


def layer_bytes(shape: ModelShape) -> LayerBytes:
    """The weights by layer: from the GGUF's tensors when the shape has them, else the token
    embeddings (n_vocab x embedding length at the file's bytes per weight) as input and output
    and the rest split evenly over the layers."""
    n_layers = shape.facts.block_count or 0
    if shape.tensor_bytes and n_layers:
        layers = [0] * n_layers
        named = dict(shape.tensor_bytes)
        output = 0
        rest = 0
        for name, n in shape.tensor_bytes:
            m = _LAYER_TENSOR.match(name)
            if m and int(m.group(1)) < n_layers:
                layers[int(m.group(1))] += n
            elif name in _OUTPUT_TENSORS:
                output += n
            else:
                rest += n
        tied = "output.weight" not in named
        copy = named.get("token_embd.weight", 0) if tied else 0
        return LayerBytes(tuple(layers), input=rest, output=output + copy, output_host=output)
    params = shape.facts.parameter_count or 0
    per_weight = shape.weights_bytes / params if params else 0.0
    embeddings = int(shape.n_vocab * (shape.facts.embedding_length or 0) * per_weight)
    if not n_layers:
        return LayerBytes((), input=shape.weights_bytes, output=0, output_host=0)
    if 2 * embeddings >= shape.weights_bytes:
        embeddings = shape.weights_bytes // (n_layers + 2)
    each = (shape.weights_bytes - 2 * embeddings) // n_layers
    rest = shape.weights_bytes - embeddings - n_layers * each  # the input layer takes the rounding
    return LayerBytes((each,) * n_layers, input=rest, output=embeddings, output_host=embeddings)


def split_points(shares: Sequence[float]) -> tuple[float, ...]:
    """llama.cpp's cumulative, normalised split points."""
    total = sum(shares)
    points, running = [], 0.0
    for share in shares:
        running += share
        points.append(running / total)
    return tuple(points)


def device_of(il: int, first: int, k: int, points: Sequence[float]) -> int:
    """The GPU of layer ``il`` (``n_layers`` is the output layer), llama.cpp's upper_bound rule;
    -1 for the CPU."""
    if il < first or il - first >= k:
        return -1
    x = (il - first) / k
    return next((d for d, p in enumerate(points) if p > x), len(points) - 1)


def place(weights: LayerBytes, kv_layer: int, compute: int, overhead: int, k: int,
          shares: Sequence[float]) -> tuple[tuple[int, ...], int]:
    """Each GPU's bytes and the host's with ``k`` = n_gpu_layers and the given split."""
    n = len(weights.layers)
    k = min(k, n + 1)
    devices = [0] * len(shares)
    host = weights.input + overhead
    first = max(0, n - k)
    points = split_points(shares) if k and any(shares) else ()
    for il in range(n + 1):
        d = device_of(il, first, k, points) if points else -1
        size = weights.layers[il] + kv_layer if il < n else weights.output
        if d < 0:
            host += weights.layers[il] + kv_layer if il < n else weights.output_host
        else:
            devices[d] += size
    holding = [d for d in range(len(devices)) if devices[d]]
    for d in holding:
        devices[d] += compute
    if len(holding) == 0 or k <= n:  # some layers (or the output) run on the CPU: its compute buffer too
        host += compute
    return tuple(devices), host


def plan_offload(
    weights: LayerBytes,
    kv_layer_bytes: int,
    compute_bytes: int,
    overhead_bytes: int,
    gpus: Sequence[Gpu],
    gpu_layers: int | None = None,
    tensor_split: Sequence[float] = (),
    main_gpu: int = -1,
    can_offload: bool = True,
) -> OffloadPlan:
    """Plan a load. ``gpu_layers`` None: as many layers as fit in each GPU's free memory less
    ``VRAM_MARGIN_BYTES`` (all of them and the output layer when they fit), N: N layers whatever
    fits. ``tensor_split``: each GPU's share (empty: by free memory); ``main_gpu`` >= 0 without a
    split: that GPU alone. ``can_offload`` False: this llama.cpp build is CPU-only."""
    n = len(weights.layers)

    def cpu(why: str) -> OffloadPlan:
        _, host = place(weights, kv_layer_bytes, compute_bytes, overhead_bytes, 0, ())
        return OffloadPlan(0, n, tuple(0 for _ in gpus), host, (), 0, "cpu", f"CPU only: {why}")

    if not gpus:
        return cpu("no GPU")
    if not can_offload:
        return cpu("this llama.cpp build cannot offload")
    if gpu_layers == 0:
        return cpu("--gpu-layers 0")
    if main_gpu >= len(gpus):
        raise ValueError(f"main_gpu {main_gpu}: there are {len(gpus)} GPU(s) (0 to {len(gpus) - 1})")
    if tensor_split:
        shares = tuple(list(tensor_split[: len(gpus)]) + [0.0] * max(0, len(gpus) - len(tensor_split)))
        if not any(shares):
            raise ValueError(f"tensor_split {list(tensor_split)} gives no layer to any of the {len(gpus)} GPU(s)")
    elif main_gpu >= 0:
        shares = tuple(1.0 if d == main_gpu else 0.0 for d in range(len(gpus)))
    else:
        shares = tuple(float(max(0, g.memory_free)) for g in gpus)
        if not any(shares):
            return cpu("no free GPU memory")
    room = [max(0, g.memory_free - VRAM_MARGIN_BYTES) for g in gpus]

    def fits(devices: Sequence[int]) -> bool:
        return all(b <= r for b, r in zip(devices, room, strict=True))

    if gpu_layers is None:
        for k in range(n + 1, 0, -1):
            devices, host = place(weights, kv_layer_bytes, compute_bytes, overhead_bytes, k, shares)
            if fits(devices):
                break
        else:
            return cpu("not one layer fits in free GPU memory")
    else:
        k = min(gpu_layers, n + 1)
        devices, host = place(weights, kv_layer_bytes, compute_bytes, overhead_bytes, k, shares)
    on = min(k, n)
    several = sum(1 for b in devices if b)
    where = "GPU" if several == 1 else f"{several} GPUs"
    if k > n:
        verdict, text = "gpu", f"fits on {where}"
    else:
        verdict, text = "partial", f"partial: {on} of {n} layers on {where}"
        if on == n:
            text += " (the output layer on the CPU)"
    ok = fits(devices)
    if not ok:
        text += " (more than the free GPU memory)"
    return OffloadPlan(k, n, devices, host, tuple(shares), max(0, main_gpu), verdict, text, ok)


def plan_for(
    shape: ModelShape,
    estimate: MemoryEstimate,
    gpus: Sequence[Gpu],
    gpu_layers: int | None = None,
    tensor_split: Sequence[float] = (),
    main_gpu: int = -1,
    can_offload: bool = True,
) -> OffloadPlan:
    """The plan for a model sized by ``estimate`` (its KV cache split evenly over the layers)."""
    weights = layer_bytes(shape)
    kv_layer = estimate.kv_cache // max(1, len(weights.layers))
    return plan_offload(weights, kv_layer, estimate.compute, estimate.overhead, gpus, gpu_layers, tensor_split,
                        main_gpu, can_offload)


def reserve(gpus: Sequence[Gpu], nbytes: int) -> tuple[Gpu, ...]:
    """``gpus`` with ``nbytes`` taken out of their free memory, shared as their free memory is (what
    a second model loaded with the same split, a draft, will take)."""
    free = sum(g.memory_free for g in gpus)
    if free <= 0:
        return tuple(gpus)
    return tuple(replace(g, memory_free=max(0, g.memory_free - nbytes * g.memory_free // free)) for g in gpus)


def fallback_layers(gpu_layers: int) -> list[int]:
    """What a load that failed with ``gpu_layers`` on GPUs tries next: half the layers, then none."""
    tries = []
    k = gpu_layers // 2
    if k > 0:
        tries.append(k)
    tries.append(0)
    return tries
