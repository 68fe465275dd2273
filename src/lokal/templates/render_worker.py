"""The chat template render worker: a clean interpreter that compiles and renders templates sent
by its parent (``render_pool``), under a memory limit.

Started by ``render_pool`` as ``main([ROOT, REQ_FD, RESP_FD, RENDER_S, LIMIT_MIB])``. Frames on
both pipes are a 4-byte big-endian length and a body. Requests are pickles of
``(op, source, variables)`` with ``op`` "compile" or "render" (the parent is trusted). Replies
are one status byte (``K`` ok, ``E`` TemplateError, ``M`` out of memory), one byte ``1`` if the
worker stays or ``0`` if it exits after this reply, then UTF-8 text (the prompt or the error):
text, never a pickle, so the parent trusts nothing the worker sends. The first frame is ``R1``,
sent once the worker is ready.

The parent enforces the wall-clock budget (it kills a worker that overruns); the worker adds
its own address-space limit (``RLIMIT_AS``, its baseline plus LIMIT_MIB) and, as a last resort,
an alarm that ends it if a render outlives the budget by far and nobody killed it.
Import-light: the standard library, jinja2 and ``lokal.templates.sandbox`` only.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from collections import OrderedDict
from typing import Any

from lokal.templates import sandbox

_HEADER = struct.Struct("!I")
_CACHE_SIZE = 32  # compiled templates kept, by source
_RECYCLE_MIB = 64  # resident memory above the baseline after which a worker replaces itself
_ALARM_GRACE_S = 5.0


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes | None:
    """One frame's body, or None at the end of the pipe."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    return _read_exact(fd, _HEADER.unpack(header)[0])


def write_frame(fd: int, body: bytes) -> None:
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def _statm() -> tuple[int, int] | None:
    """(address space, resident) in bytes, Linux only."""
    try:
        with open("/proc/self/statm", "rb") as f:
            size, resident = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size) * page, int(resident) * page


def _limit_memory(limit_mib: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: the parent's deadline still holds
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    now = _statm()
    if now is None or limit_mib <= 0:
        return
    limit = now[0] + limit_mib * 2**20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # a stricter limit is already set: it holds instead
        pass


class _Renderer:
    def __init__(self) -> None:
        self.cache: OrderedDict[str, Any] = OrderedDict()

    def compiled(self, source: str) -> Any:
        template = self.cache.get(source)
        if template is None:
            template = sandbox.compile_template(source)
            self.cache[source] = template
            if len(self.cache) > _CACHE_SIZE:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(source)
        return template

    def handle(self, body: bytes) -> tuple[bytes, str]:
        op, source, variables = pickle.loads(body)
        template = self.compiled(source)
        if op == "compile":
            return b"K", ""
        return b"K", sandbox.render_template(template, variables)


def serve(req_fd: int, resp_fd: int, render_s: float, limit_mib: int) -> int:
    sandbox.MAX_RENDER_S = render_s
    sandbox.MAX_RENDER_MIB = limit_mib
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; it ends us at exit
    _limit_memory(limit_mib)
    base = _statm()
    renderer = _Renderer()
    write_frame(resp_fd, b"R1")
    while True:
        body = read_frame(req_fd)
        if body is None:
            return 0
        signal.setitimer(signal.ITIMER_REAL, render_s + _ALARM_GRACE_S)  # default action: exit
        stay = True
        try:
            status, text = renderer.handle(body)
        except sandbox.TemplateError as exc:
            status, text = b"E", str(exc)
        except MemoryError:
            renderer = _Renderer()
            status, text, stay = b"M", sandbox.memory_message(), False
        except Exception as exc:  # a request this worker cannot read: the parent's bug, not ours to die of
            status, text = b"E", f"chat template failed to render: {type(exc).__name__}: {exc}"
        signal.setitimer(signal.ITIMER_REAL, 0)
        if stay and base is not None:
            now = _statm()
            stay = now is None or now[1] - base[1] < _RECYCLE_MIB * 2**20
        write_frame(resp_fd, status + (b"1" if stay else b"0") + text.encode("utf-8", "surrogatepass"))
        if not stay:
            return 0


def main(argv: list[str]) -> int:
    """``argv``: anything, then the request and reply pipes' fds, the budget in s and in MiB."""
    req_fd, resp_fd, render_s, limit_mib = int(argv[1]), int(argv[2]), float(argv[3]), int(argv[4])
    try:
        return serve(req_fd, resp_fd, render_s, limit_mib)
    except BrokenPipeError:  # the parent went away
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))  # python -m lokal.templates.render_worker REQ_FD RESP_FD RENDER_S LIMIT_MIB
