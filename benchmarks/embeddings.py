"""Embedding throughput of stored models through ``Runtime.embed`` (no HTTP), issue 20.

64 inputs of ~20 tokens per request, best of ``--reps``; prints inputs/s, tokens/s and the
model's memory figure (the one ``/api/ps`` shows).

    python benchmarks/embeddings.py --model all-minilm:l6-v2 --model smollm2:135m
"""

from __future__ import annotations

import argparse
import asyncio
import time

from lokal.config import Settings
from lokal.runtime.runtime import Runtime

TEXTS = [f"Sentence number {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(64)]


async def run(models: list[str], reps: int) -> None:
    runtime = Runtime(Settings())
    try:
        for model in models:
            await runtime.embed(model, ["warm up"])
            runs = []
            for _ in range(reps):
                started = time.perf_counter()
                result, dimensions, _ = await runtime.embed(model, TEXTS)
                runs.append(time.perf_counter() - started)
            best = min(runs)
            loaded = next(m for m in runtime.loaded() if m.name == runtime.canonical_name(model))
            print(f"{model}: {dimensions} dimensions, {len(TEXTS)} inputs of {result.prompt_tokens // len(TEXTS)} "
                  f"tokens: {best * 1000:.0f} ms ({len(TEXTS) / best:.0f} inputs/s, "
                  f"{result.prompt_tokens / best:.0f} tokens/s), {runtime.memory_bytes(loaded) / 1e6:.0f} MB loaded")
    finally:
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a stored model (repeatable)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.model, args.reps))


if __name__ == "__main__":
    main()
