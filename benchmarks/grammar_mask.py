"""Per-token cost of a grammar's token mask at 8 concurrent constrained streams, by engine.

Candidates, on the same GGUF vocabulary (smollm2's 49k tokens) and the same JSON schemas (what
pydantic's ``model_json_schema()`` emits for two models, one with ``Field(ge=0)`` bounds):

- ``llama.cpp full``: lokal's grammar (``lokal.engine.grammar.schema_grammar``) in llama.cpp's
  grammar sampler, applied to the whole vocabulary: what lokal pays when the model's own pick
  is refused.
- ``llama.cpp check``: the same sampler applied to the one token the chain picked: what lokal
  pays when the pick is allowed (most steps of a model that follows the format).
- ``llguidance``: llguidance 1.9 compiling the same schema itself and filling a full token
  bitmask (``LLMatcher``, one stream at a time, and ``LLExecutor`` for all 8 at once).
- ``llguidance gbnf``: llguidance on lokal's own GBNF (through its ``gbnf_to_lark``), the same
  grammar llama.cpp runs: what swapping only the mask engine would cost.

``--engine`` runs 8 constrained streams of smollm2 itself through lokal's engine (real logits,
temperature 0.7) and reports how often the chain's pick is refused and the time spent in
``SamplerChain.sample_constrained`` per token (the chain's own sampling included).

Each stream samples uniformly among allowed tokens (random logits, the mask on every step: the
worst case for the lazy check), so every engine walks states of the same kind. The table gives
the median over reps of the mask time per generated token.

    python benchmarks/grammar_mask.py --model smollm2:135m --streams 8 --reps 3
    python benchmarks/grammar_mask.py --model smollm2:135m --engine
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp as C
import numpy as np
from pydantic import BaseModel, Field

from lokal.config import Settings
from lokal.engine.grammar import schema_grammar
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.store.model_store import ModelStore

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Item(BaseModel):
    name: str = Field(max_length=12)
    count: int = Field(ge=0)


class Point(BaseModel):
    x: float = Field(ge=-1.5, lt=2)
    y: int = Field(gt=-3, le=120)


class Order(BaseModel):
    id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=3)
    where: Point
    note: str | None = Field(default=None, max_length=16)


SCHEMAS = {"Item": Item.model_json_schema(), "Order": Order.model_json_schema()}


def token_array(cand: np.ndarray) -> C.llama_token_data_array:
    return C.llama_token_data_array(cand.ctypes.data_as(ctypes.POINTER(C.llama_token_data)), len(cand), -1, False)


def llama_cpp_run(model: LlamaModel, grammar: str, streams: int, max_tokens: int, seed: int,
                  full: bool) -> tuple[float, int]:
    """(seconds in the grammar sampler, tokens) for ``streams`` streams stepped round robin."""
    rng = np.random.default_rng(seed)
    samplers = [model.grammar_sampler(grammar) for _ in range(streams)]
    live = list(range(streams))
    n = model.n_vocab
    spent, tokens, produced = 0.0, 0, [0] * streams
    cand = np.zeros(n, dtype=_TOKEN_DATA)
    while live:
        for s in list(live):
            cand["id"] = np.arange(n, dtype=np.int32)
            cand["logit"] = rng.standard_normal(n).astype(np.float32)
            cand["p"] = 0.0
            arr = token_array(cand)
            t0 = time.perf_counter()
            C.llama_sampler_apply(samplers[s], ctypes.byref(arr))
            spent += time.perf_counter() - t0 if full else 0.0
            token = int(cand["id"][int(np.argmax(cand["logit"]))])
            if not full:  # the lazy path: one candidate, the token already known to be allowed
                one = np.array([(token, 0.0, 0.0)], dtype=_TOKEN_DATA)
                t0 = time.perf_counter()
                C.llama_sampler_apply(samplers[s], ctypes.byref(token_array(one)))
                spent += time.perf_counter() - t0
            C.llama_sampler_accept(samplers[s], token)
            tokens += 1
            produced[s] += 1
            if model.is_eog(token) or produced[s] >= max_tokens:
                live.remove(s)
    for ptr in samplers:
        C.llama_sampler_free(ptr)
    return spent, tokens


def llguidance_run(model: LlamaModel, schema: dict, streams: int, max_tokens: int, seed: int,
                   batched: bool, gbnf: str | None = None) -> tuple[float, int]:
    import llguidance
    import llguidance.numpy as lln
    from llguidance.gbnf_to_lark import gbnf_to_lark
    from llguidance.llamacpp import lltokenizer_from_vocab

    tok = _lltokenizer(model, lltokenizer_from_vocab)
    if gbnf is not None:
        grammar = llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(gbnf))
    else:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                defaults={"whitespace_flexible": True})
    matchers = [llguidance.LLMatcher(tok, grammar, log_level=0) for _ in range(streams)]
    if matchers[0].is_error():
        raise RuntimeError(matchers[0].get_error())
    executor = llguidance.LLExecutor()
    rng = np.random.default_rng(seed)
    mask = lln.allocate_token_bitmask(streams, model.n_vocab)
    live = list(range(streams))
    spent, tokens, produced = 0.0, 0, [0] * streams
    while live:
        t0 = time.perf_counter()
        if batched:
            lln.fill_next_token_bitmask_par(executor, [(matchers[s], s) for s in live], mask)
        else:
            for s in live:
                lln.fill_next_token_bitmask(matchers[s], mask, s)
        spent += time.perf_counter() - t0
        for s in list(live):
            allowed = np.unpackbits(mask[s].view(np.uint8), bitorder="little")[: model.n_vocab].nonzero()[0]
            token = int(rng.choice(allowed))
            if not matchers[s].consume_token(token):
                raise RuntimeError(matchers[s].get_error())
            tokens += 1
            produced[s] += 1
            if matchers[s].is_stopped() or model.is_eog(token) or produced[s] >= max_tokens:
                live.remove(s)
    return spent, tokens


_TOKENIZERS: dict[int, object] = {}


def _lltokenizer(model: LlamaModel, make: Callable[..., object]) -> object:
    if id(model) not in _TOKENIZERS:
        _TOKENIZERS[id(model)] = make(model._vocab)
    return _TOKENIZERS[id(model)]


def engine_run(path: Path, streams: int) -> None:
    """Real constrained streams through lokal's engine, with the sampler's grammar step timed."""
    import lokal.engine.llama_model as llama_model
    from lokal.engine.engine import Engine
    from lokal.engine.sampling import SamplingParams

    stats = {"tokens": 0, "refused": 0, "seconds": 0.0}
    sample, pick = llama_model.SamplerChain.sample_constrained, llama_model.SamplerChain._pick

    def timed_sample(self: llama_model.SamplerChain, logits: ctypes._Pointer) -> int:  # type: ignore[type-arg]
        t0 = time.perf_counter()
        token = sample(self, logits)
        stats["seconds"] += time.perf_counter() - t0
        stats["tokens"] += 1
        return token

    def counted_pick(self: llama_model.SamplerChain, logits: ctypes._Pointer, *args: object,  # type: ignore[type-arg]
                     **kwargs: object) -> int:
        mask = (args or tuple(kwargs.values()))[0]  # a mask, or (lokal before llguidance) with_grammar
        stats["refused"] += mask is not None and mask is not False
        return pick(self, logits, *args, **kwargs)  # type: ignore[arg-type]

    llama_model.SamplerChain.sample_constrained = timed_sample  # type: ignore[method-assign]
    llama_model.SamplerChain._pick = counted_pick  # type: ignore[method-assign]
    model = LlamaModel(path, ContextShape(slot_ctx=512, n_slots=streams, n_batch=512, n_threads=2))
    engine = Engine(model, prefix_cache=False)
    print(f"\n{path.name}, lokal's engine, {streams} streams\n")
    print("| schema | tokens | refused picks | sample_constrained ms/token | wall ms/token |\n|---|---|---|---|---|")
    for name, schema in SCHEMAS.items():
        grammar = schema_grammar(schema)
        stats.update(tokens=0, refused=0, seconds=0.0)
        started = time.perf_counter()
        for i in range(streams):
            prompt = model.tokenize(f"<|im_start|>user\nDescribe example {i} as JSON with the fields of "
                                    f"{json.dumps(schema)[:300]}<|im_end|>\n<|im_start|>assistant\n", True, True)
            engine.add(prompt, SamplingParams(grammar=grammar, temperature=0.7, seed=i, max_tokens=120))
        while engine.has_work():
            engine.step()
        wall = time.perf_counter() - started
        n = max(stats["tokens"], 1)
        print(f"| {name} | {stats['tokens']} | {stats['refused'] / n:.1%} | {stats['seconds'] / n * 1000:.2f} | "
              f"{wall / n * 1000:.1f} |")
    model.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--engine", action="store_true", help="real streams through lokal's engine instead")
    args = ap.parse_args()
    store = ModelStore(Path(Settings().home))
    if args.engine:
        engine_run(store.gguf_path(args.model), args.streams)
        return
    model = LlamaModel(store.gguf_path(args.model), ContextShape(slot_ctx=64, n_slots=1, n_batch=64, n_threads=1))
    rows = []
    for name, schema in SCHEMAS.items():
        grammar = schema_grammar(schema)
        candidates: dict[str, Callable[[int], tuple[float, int]]] = {
            "llama.cpp full": lambda seed, g=grammar: llama_cpp_run(model, g, args.streams, args.max_tokens, seed,
                                                                    True),
            "llama.cpp check": lambda seed, g=grammar: llama_cpp_run(model, g, args.streams, args.max_tokens, seed,
                                                                     False),
            "llguidance": lambda seed, s=schema: llguidance_run(model, s, args.streams, args.max_tokens, seed, False),
            "llguidance par": lambda seed, s=schema: llguidance_run(model, s, args.streams, args.max_tokens, seed,
                                                                    True),
            "llguidance gbnf": lambda seed, s=schema, g=grammar: llguidance_run(model, s, args.streams,
                                                                                args.max_tokens, seed, False, g),
        }
        for engine, run in candidates.items():
            per_token = []
            for rep in range(args.reps):
                spent, tokens = run(rep)
                per_token.append(spent / tokens * 1000)
            rows.append((name, engine, statistics.median(per_token), min(per_token), max(per_token)))
    print(f"\n{args.model}, {model.n_vocab} tokens, {args.streams} streams, {args.reps} reps\n")
    print("| schema | engine | ms/token (median) | min | max |\n|---|---|---|---|---|")
    for name, engine, med, lo, hi in rows:
        print(f"| {name} | {engine} | {med:.3f} | {lo:.3f} | {hi:.3f} |")
    model.close()


if __name__ == "__main__":
    main()
