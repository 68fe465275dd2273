"""Single-stream decode speed: lokal (engine and HTTP) against llama.cpp's raw speed.

Same GGUF, same threads, same prompt, greedy, a fixed number of generated tokens (EOS ignored).
"raw" is a bare loop over llama.cpp's C API (llama_decode of one token + native greedy sampler)
in the same libllama lokal uses; `--llama-bench PATH` adds llama.cpp's own llama-bench binary.

    python benchmarks/decode_speed.py --model smollm2:135m --threads 2 --tokens 256 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import llama_cpp as C

from lokal.config import Settings
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel, batch_invariant_flash_attention
from lokal.engine.sampling import SamplingParams
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

PROMPT = "Write a short story about a lighthouse keeper."
# Every target decodes with flash attention exactly when lokal's engine does (lokal's own build).
FLASH_ATTENTION = 1 if batch_invariant_flash_attention() else 0


def raw_llama_cpp(path: Path, threads: int, n_gen: int, prompt_tokens: list[int]) -> float:
    """tok/s of a minimal C-API greedy loop: no scheduler, no detokenizer, no HTTP."""
    mp = C.llama_model_default_params()
    model = C.llama_model_load_from_file(str(path).encode(), mp)
    cp = C.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 2048, 512, threads, threads
    cp.flash_attn_type = FLASH_ATTENTION  # as lokal's engine runs it
    ctx = C.llama_init_from_model(model, cp)
    smpl = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    C.llama_sampler_chain_add(smpl, C.llama_sampler_init_greedy())
    arr = (C.llama_token * len(prompt_tokens))(*prompt_tokens)
    C.llama_decode(ctx, C.llama_batch_get_one(arr, len(prompt_tokens)))
    tok = C.llama_sampler_sample(smpl, ctx, -1)
    one = (C.llama_token * 1)()
    start = time.perf_counter()
    for _ in range(n_gen - 1):
        one[0] = tok
        C.llama_decode(ctx, C.llama_batch_get_one(one, 1))
        tok = C.llama_sampler_sample(smpl, ctx, -1)
    elapsed = time.perf_counter() - start
    C.llama_sampler_free(smpl)
    C.llama_free(ctx)
    C.llama_model_free(model)
    return (n_gen - 1) / elapsed


def lokal_engine(path: Path, threads: int, n_gen: int, prompt_tokens: list[int]) -> float:
    """tok/s of lokal's engine step loop (scheduler, sampler chain, detokenizer), no HTTP."""
    model = LlamaModel(path, ContextShape(slot_ctx=2048, n_slots=1, n_batch=512, n_threads=threads))
    engine = Engine(model, prefix_cache=False)
    engine.add(prompt_tokens, SamplingParams(temperature=0, max_tokens=n_gen, ignore_eos=True))
    first = last = 0.0
    n_first = 0
    while engine.has_work():
        engine.step()
        running = engine.scheduler.running
        if running and running[0].n_generated and not first:
            first, n_first = time.perf_counter(), running[0].n_generated
        last = time.perf_counter()
    model.close()
    return (n_gen - n_first) / (last - first)


def lokal_http(home: Path, model: str, threads: int, n_gen: int) -> float:
    """tok/s seen by a streaming client of `lokal serve` (first to last token)."""
    port = 11499
    env = {**os.environ, "LOKAL_HOME": str(home), "LOKAL_THREADS": str(threads)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lokal.cli.main", "serve", "--port", str(port), "--model", model,
         "--parallel", "1", "--ctx-size", "2048"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
                "temperature": 0, "max_tokens": n_gen, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        stamps: list[float] = []
        n_tokens = 0
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    n_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter())
        return (n_tokens - 1) / (stamps[-1] - stamps[0])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def llama_bench(binary: str, path: Path, threads: int, n_gen: int) -> float:
    out = subprocess.run(
        [binary, "-m", str(path), "-t", str(threads), "-p", "0", "-n", str(n_gen), "-fa", str(FLASH_ATTENTION),
         "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--llama-bench", default=None, help="path to llama.cpp's llama-bench binary")
    args = ap.parse_args()

    settings = Settings()
    store = ModelStore(settings.home)
    pull_model(store, args.model)
    path = store.gguf_path(args.model)
    probe = LlamaModel(path, ContextShape(slot_ctx=512, n_slots=1, n_batch=512, n_threads=args.threads))
    from lokal.templates.chat_template import ChatTemplate

    tpl = ChatTemplate.for_model(probe.chat_template(), probe.architecture, probe.bos_text, probe.eos_text)
    prompt_tokens = probe.tokenize(tpl.render([{"role": "user", "content": PROMPT}]), False, True)
    probe.close()

    results: dict[str, list[float]] = {"llama.cpp C API (raw loop)": [], "lokal engine": [], "lokal HTTP stream": []}
    if args.llama_bench:
        results["llama-bench"] = []
    for _ in range(args.runs):  # interleaved, so drift hits every target alike
        results["llama.cpp C API (raw loop)"].append(raw_llama_cpp(path, args.threads, args.tokens, prompt_tokens))
        results["lokal engine"].append(lokal_engine(path, args.threads, args.tokens, prompt_tokens))
        results["lokal HTTP stream"].append(lokal_http(settings.home, args.model, args.threads, args.tokens))
        if args.llama_bench:
            results["llama-bench"].append(llama_bench(args.llama_bench, path, args.threads, args.tokens))
    base = statistics.median(results["llama.cpp C API (raw loop)"])
    print(f"model={args.model} threads={args.threads} tokens={args.tokens} runs={args.runs}")
    print(f"{'target':<28} {'decode tok/s (median)':>22} {'vs raw':>8}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<28} {med:>22.1f} {med / base:>8.1%}")


if __name__ == "__main__":
    main()
