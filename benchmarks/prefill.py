"""Cold prefill: lokal's engine kernels (in process, prompt mode, 512-token chunks as the engine reads a
prompt) against llama-server's (`timings.prompt_ms`, or its CPU time), on the same GGUF, prompts and
threads, interleaved rep by rep.

    .venv/bin/python benchmarks/prefill.py --llama-server PATH/TO/llama-server \\
        [--model smollm2:135m | --gguf FILE] [--tokens 250 1500] [--reps 3] [--threads 2] [--cpu]

``--cpu`` compares CPU time instead of wall time (with ``--threads 1`` the kernels' work, robust
on a shared, busy machine). Prints one Markdown row per prompt size: medians in ms, the median of
the per-rep ratios lokal ÷ llama-server (< 1 is faster) and every rep."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.store.model_store import ModelStore

TEXT = Path(__file__).resolve().parents[1] / "src/lokal/engine"
PORT = 18181


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 10.0  # utime + stime, 100 ticks a second


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--home", type=Path, default=Path(".test-home"))
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--gguf", type=Path, help="a GGUF file instead of --model")
    ap.add_argument("--tokens", type=int, nargs="+", default=[250, 1500])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="CPU time instead of wall time")
    a = ap.parse_args()
    path = a.gguf or ModelStore(a.home).gguf_path(a.model)
    model = LlamaModel(path, ContextShape(slot_ctx=4096, n_slots=1, n_batch=512, n_threads=a.threads))
    text = "".join(p.read_text() for p in sorted(TEXT.glob("*.py")))
    tokens = model.tokenize(text, add_special=True, parse_special=False)
    server = subprocess.Popen(
        [a.llama_server, "-m", str(path), "--port", str(PORT), "-t", str(a.threads), "-c", "4096", "-np", "1",
         "-b", "512", "-ub", "512", "--no-warmup"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def lokal(prompt: list[int]) -> float:
        model.forget(0, 0)
        t, c = time.perf_counter(), time.process_time()
        for start in range(0, len(prompt), 512):
            chunk = prompt[start:start + 512]
            model.decode([(tok, start + i, 0, start + i == len(prompt) - 1) for i, tok in enumerate(chunk)],
                         prompt=True)
        return (time.process_time() - c if a.cpu else time.perf_counter() - t) * 1000

    def peer(prompt: list[int]) -> float:
        body = json.dumps({"prompt": prompt, "n_predict": 1, "cache_prompt": False}).encode()
        c = cpu_ms(server.pid)
        req = urllib.request.Request(f"http://127.0.0.1:{PORT}/completion", body, {"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(req))
        return cpu_ms(server.pid) - c if a.cpu else float(reply["timings"]["prompt_ms"])

    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health")
                break
            except OSError:
                time.sleep(0.3)
        name = a.gguf.name if a.gguf else a.model
        print("| model | prompt tokens | lokal ms | llama-server ms | lokal ÷ llama-server | reps |")
        print("|---|---|---|---|---|---|")
        for n in a.tokens:
            ours, theirs = [], []
            for r in range(a.reps):
                prompt = tokens[r * 7:r * 7 + n]  # another prompt each rep: no cache helps anyone
                ours.append(lokal(prompt))
                theirs.append(peer(prompt))
            ratio = statistics.median(x / y for x, y in zip(ours, theirs, strict=True))
            reps = " / ".join(f"{x:.0f}" for x in ours) + " vs " + " / ".join(f"{x:.0f}" for x in theirs)
            print(f"| {name} | {n} | {statistics.median(ours):.0f} | {statistics.median(theirs):.0f} "
                  f"| {ratio:.2f} × | {reps} |", flush=True)
    finally:
        server.terminate()
        server.wait()
        model.close()


if __name__ == "__main__":
    main()
