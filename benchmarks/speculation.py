"""Single-stream greedy decode speed with prompt-lookup speculation off and on, in process through
the engine (no HTTP): a code-edit-like prompt whose answer repeats it, and a plain chat prompt.

    .venv/bin/python benchmarks/speculation.py [--home .test-home] [--reps 3] [--max-tokens 128]

Prints a Markdown table: median decode tok/s (first token to last) over the reps, and the share of
drafted tokens accepted. Greedy answers are checked to be identical with speculation off and on."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.speculate import Speculation
from lokal.store.model_store import ModelStore

CODE = '''def total_price(items, tax_rate, discount=None):
    subtotal = 0
    for item in items:
        if item.quantity <= 0:
            continue
        subtotal += item.price * item.quantity
    if discount is not None:
        subtotal -= subtotal * discount
    tax = subtotal * tax_rate
    return round(subtotal + tax, 2)
'''
PROMPTS = {
    "code-edit": "# Original version\n" + CODE + "\n\n# The same function, with subtotal renamed to base\n",
    "chat": "<|im_start|>user\nWhy is the sky blue? Explain it to a child.<|im_end|>\n<|im_start|>assistant\n",
}


def once(model: LlamaModel, spec: Speculation, prompt: list[int], max_tokens: int) -> tuple[float, list[int], int, int]:
    for slot in range(model.shape.n_slots):
        model.forget(slot, 0)
    eng = Engine(model, prefix_cache=False, speculation=spec)
    seq = eng.add(prompt, SamplingParams(temperature=0, max_tokens=max_tokens))
    while eng.has_work():
        eng.step()
    assert seq.first_token_at is not None and seq.finished_at is not None
    tps = (seq.n_generated - 1) / (seq.finished_at - seq.first_token_at)
    s = eng.stats()
    return tps, seq.tokens, s.drafted_tokens, s.accepted_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(".test-home"))
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = LlamaModel(ModelStore(a.home).gguf_path(a.model),
                       ContextShape(slot_ctx=1024, n_slots=1, n_batch=512, n_threads=a.threads))
    print("| prompt | tokens | off tok/s | ngram tok/s | speed-up | accepted/drafted |")
    print("|---|---|---|---|---|---|")
    for name, text in PROMPTS.items():
        prompt = model.tokenize(text, add_special=True, parse_special=True)
        off: list[float] = []
        on: list[float] = []
        drafted = accepted = n_gen = 0
        for _ in range(a.reps):  # interleaved, so drift in the machine's load hits both alike
            t_off, toks_off, _, _ = once(model, Speculation.OFF, prompt, a.max_tokens)
            t_on, toks_on, d, acc = once(model, Speculation.NGRAM, prompt, a.max_tokens)
            if toks_on != toks_off:
                raise SystemExit(f"{name}: speculation changed the greedy answer")
            off.append(t_off)
            on.append(t_on)
            drafted, accepted, n_gen = d, acc, len(toks_on) - len(prompt)
        m_off, m_on = statistics.median(off), statistics.median(on)
        print(f"| {name} | {n_gen} | {m_off:.1f} | {m_on:.1f} | {m_on / m_off:.2f} × | {accepted}/{drafted} |")
    model.close()


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - t0:.0f} s)")
