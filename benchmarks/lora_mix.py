"""What a LoRA adapter costs the engine (issue 21, item 5): N concurrent greedy requests all on the
base model, against the same N with half of them on a LoRA adapter over the same weights.

llama.cpp applies adapters to a whole context, so the scheduler decodes one adapter set per step,
in turns: with two sets, each step holds half the sequences (docs/engine.md). Offline (no HTTP),
one model, one engine; each mode runs ``--reps`` times, alternating, and reports the median
aggregate generated tok/s and wall time, then mixed ÷ base; "all adapter" (every request on the
adapter: one set, so no turns) separates the adapter's own arithmetic from the cost of turns.
``--adapter`` defaults to the test adapter (tests/data/lora/smollm2-ahoy.gguf, for smollm2:135m).

    python benchmarks/lora_mix.py --model smollm2:135m --requests 8 --tokens 64 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lokal.config import Settings
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Adapters
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

QUESTIONS = ("Describe a river.", "What is a bicycle?", "Name a fruit and say why it is good.", "Why do cats purr?",
             "What is a library?", "Explain rain to a child.", "What is a computer?", "Describe the moon.")
CAPS = Path(__file__).resolve().parent.parent / "tests" / "data" / "lora" / "smollm2-ahoy.gguf"


def run(engine: Engine, requests: list[tuple[list[int], Adapters]], params: SamplingParams) -> tuple[float, float]:
    """(wall seconds, generated tokens per second) for all requests submitted at once."""
    started = time.perf_counter()
    seqs = [engine.add(prompt, params, adapters=adapters) for prompt, adapters in requests]
    while engine.has_work():
        engine.step()
    wall = time.perf_counter() - started
    return wall, sum(s.n_generated for s in seqs) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--adapter", type=Path, default=CAPS)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="generated per request")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=Settings().threads)
    args = parser.parse_args()

    store = ModelStore(Settings().home)
    pull_model(store, args.model)
    model = LlamaModel(store.gguf_path(args.model), ContextShape(slot_ctx=512, n_slots=args.requests,
                                                                 n_batch=512, n_threads=args.threads))
    adapter = model.load_adapter(args.adapter)
    # no prefix cache: every rep reads its prompts in full; ignore_eos: every request makes --tokens
    engine = Engine(model, prefix_cache=False)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    prompts = [model.tokenize(f"<|im_start|>user\n{QUESTIONS[i % len(QUESTIONS)]}<|im_end|>\n<|im_start|>assistant\n",
                              True, True) for i in range(args.requests)]
    modes: dict[str, list[tuple[list[int], Adapters]]] = {
        "base": [(p, ()) for p in prompts],
        "half adapter": [(p, ((adapter, 1.0),) if i % 2 else ()) for i, p in enumerate(prompts)],
        "all adapter": [(p, ((adapter, 1.0),)) for p in prompts],  # the adapter's own cost, one set
    }
    run(engine, modes["base"][:2], params)  # warm up
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for _ in range(args.reps):
        for mode, requests in modes.items():
            results[mode].append(run(engine, requests, params))
    print(f"{args.model}, {args.requests} concurrent requests x {args.tokens} tokens, {args.threads} threads, "
          f"median of {args.reps}")
    tok_s = {}
    for mode, reps in results.items():
        tok_s[mode] = statistics.median(t for _, t in reps)
        print(f"  {mode:13s} {tok_s[mode]:7.1f} tok/s  wall {statistics.median(w for w, _ in reps):6.2f} s  "
              f"(tok/s per rep: {', '.join(f'{t:.1f}' for _, t in reps)})")
    for mode in ("half adapter", "all adapter"):
        print(f"  {mode} / base: {tok_s[mode] / tok_s['base']:.2f}x")
    model.close()


if __name__ == "__main__":
    main()
