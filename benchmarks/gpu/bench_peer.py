"""Start llama.cpp's llama-server on a GGUF file and run `lokal bench run` against it (and lokal):

    python benchmarks/gpu/bench_peer.py --llama-server PATH --gguf FILE --model NAME [--with-lokal] \
        [--slots 128 --ctx 2048 --logs DIR] -- [lokal bench run options: --concurrency, --json, ...]

`lokal bench run -t llama-server:PATH` takes its GGUF from a catalog model it can pull; the GPU kit's
model is a random file imported into the store, so the peer is started here, with the flags the bench
gives it (lokal.bench.targets.llama_server: -np slots, ctx per slot, 64 HTTP threads) and llama.cpp's
own default placement (every layer on the GPU when it fits), and measured as a URL target.
``--with-lokal`` adds lokal started by the bench (`lokal:NAME`, the same slots and context).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from lokal.bench.targets import llama_server
from lokal.config import Settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", required=True, help="path of the llama-server binary")
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--model", required=True, help="the GGUF's name in lokal's store (for lokal)")
    ap.add_argument("--with-lokal", action="store_true")
    ap.add_argument("--slots", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048, help="tokens per slot")
    ap.add_argument("--logs", type=Path, help="folder for the servers' logs")
    ap.add_argument("bench_args", nargs="*", help="after --: options for `lokal bench run`")
    args = ap.parse_args(argv)
    threads = Settings().threads
    peer = llama_server(args.llama_server, args.gguf, threads, args.slots, args.ctx)
    peer.startup_timeout = 600
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        peer.log = args.logs / "llama-server.log"
    targets = ["-t", f"llama-server={peer.url}@{peer.model}"]
    if args.with_lokal:
        targets = ["-t", f"lokal:{args.model}", *targets]
    cmd = [sys.executable, "-m", "lokal.cli.main", "bench", "run", *targets, "-m", args.model,
           "--slots", str(args.slots), "--ctx", str(args.ctx), "--threads", str(threads),
           *(["--logs", str(args.logs)] if args.logs else []), *args.bench_args]
    print("llama-server:", " ".join(peer.argv), flush=True)
    print("bench:", " ".join(cmd), flush=True)
    with peer:
        return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
