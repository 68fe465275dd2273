"""Child process of the estimate-vs-measured test: load a GGUF the way lokal does, fill one slot's
context, and print the resident memory before and after as JSON.

    python rss_probe.py MODEL.gguf CTX [--kv-type f16]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    import psutil

    from lokal.engine.llama_model import ContextShape, LlamaModel, init_backend

    path, ctx = Path(sys.argv[1]), int(sys.argv[2])
    n_batch = 512
    init_backend()
    proc = psutil.Process()
    before = proc.memory_info().rss
    model = LlamaModel(path, ContextShape(slot_ctx=ctx, n_slots=1, n_batch=n_batch, n_threads=2))
    loaded = proc.memory_info().rss
    # Fill the slot: every weight page is read and the attention buffers reach their full size.
    token = model.tokenize("hello", add_special=False, parse_special=False)[0]
    pos = 0
    while pos < ctx:
        n = min(n_batch, ctx - pos)
        model.decode([(token, pos + i, 0, pos + i == ctx - 1) for i in range(n)])
        pos += n
    filled = proc.memory_info().rss
    print(json.dumps({
        "rss_before": before, "rss_loaded": loaded, "rss_filled": filled,
        "anon_kib": _status_kib("RssAnon"), "file_kib": _status_kib("RssFile"), "n_vocab": model.n_vocab,
    }))
    model.close()


if __name__ == "__main__":
    main()
