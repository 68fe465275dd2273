"""The process that runs ``llama_model_quantize`` (``python -m lokal.workshop.quantize_worker``).

llama.cpp quantizes in C, reporting each tensor only in its log, and may abort the process on a
file it cannot read. A process of its own keeps both away from the caller: llama.cpp's log handler
here is its own (the server's stays quiet), a crash is an exit code, and Ctrl-C or a client that
goes away kills it without waiting for the C call to return.

Protocol: argv is ``INPUT OUTPUT FTYPE ALLOW_REQUANTIZE(0|1) THREADS``; each tensor done prints
``<done> <total>`` on stdout; llama.cpp's errors go to stderr; the exit code is 0 on success.
"""

from __future__ import annotations

import ctypes
import re
import sys

# llama.cpp logs "[  12/ 272] blk.1.attn_q.weight - [...], type = ..." as it starts each tensor.
_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")
_GGML_LOG_LEVEL_ERROR = 4


def _on_log(level: int, text: bytes | None, _: ctypes.c_void_p) -> None:
    if not text:
        return
    match = _TENSOR_LINE.match(text)
    if match:
        sys.stdout.write(f"{int(match.group(1))} {int(match.group(2))}\n")
        sys.stdout.flush()
    elif level == _GGML_LOG_LEVEL_ERROR:
        sys.stderr.write(text.decode("utf-8", "replace"))
        sys.stderr.flush()


_log_callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_on_log)


def main(argv: list[str]) -> int:
    """Quantize ``argv[0]`` into ``argv[1]``; the exit code of the process."""
    import llama_cpp as C

    source, target, ftype, allow_requantize, threads = argv
    C.llama_log_set(_log_callback, None)
    C.llama_backend_init()
    params = C.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.allow_requantize = allow_requantize == "1"
    params.nthread = int(threads)
    return 0 if C.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)) == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
