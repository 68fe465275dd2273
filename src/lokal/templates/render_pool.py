"""Chat templates render in worker processes, where a time and a memory budget hold.

A template is untrusted (a request's ``template``, a Modelfile's TEMPLATE, a GGUF's metadata)
and Jinja gives it loops that make no call the sandbox can check
(``{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}`` over a long string) and filters
that allocate gigabytes in one step (``'x'|center(10**9)``). So every compile and render is sent
to one of a few long-lived worker processes (``render_worker``):

- **time**: the caller waits at most MAX_RENDER_S (plus a little grace); then the worker is
  killed (SIGKILL) and the caller gets "took longer than 2 s to render". The caller's thread is
  free again; the next render gets a fresh worker.
- **memory**: each worker runs under ``RLIMIT_AS`` = its baseline + MAX_RENDER_MIB; a render
  that needs more fails with MemoryError there (or kills the worker), and the caller gets
  "needed more than 512 MiB to render". The caller's own memory does not grow.
- **clean processes**: workers are new interpreters (``python -P -c <boot>``, started by
  ``subprocess``: fork and exec at once, never a bare fork of this process, whose llama.cpp
  threads a fork would break, nor multiprocessing's spawn, which would import this process's
  ``__main__``), importing only jinja2 and ``lokal.templates.sandbox``. They keep compiled
  templates by source (an LRU) and replace themselves after a render that left them large.
  A worker killed from outside (an operator, the OOM killer) is replaced, and the render that
  met it is retried on another.
- **not POSIX** (Windows): no ``poll`` on pipes, no ``RLIMIT_AS``: templates render in the
  caller with the sandbox's own checks only (``IN_PROCESS``).
- **shared, thread-safe**: one pool per process, started on first use; up to MAX_WORKERS renders
  run at once (one worker each), more wait for a free worker. The most recently used idle worker
  is taken first, so that a quiet server keeps using one warm worker. Workers end at exit.

A round trip for an ordinary chat costs well under a millisecond (pickle, two pipe frames).
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lokal.templates import sandbox
from lokal.templates.sandbox import TemplateError

MAX_WORKERS = 4  # renders at once; each worker is a small interpreter (~25 MB resident)
GRACE_S = 0.25  # past MAX_RENDER_S before a worker is killed (its own deadline check may answer first)
IDLE_S = 60.0  # a worker beyond the first idle this long is ended
START_TIMEOUT_S = 30.0  # a worker's interpreter start (slow disks, loaded CI machines)
MAX_REPLY_BYTES = 4 * sandbox.MAX_RENDERED_CHARS + 1024  # UTF-8 of the largest prompt, and a margin

_HEADER = struct.Struct("!I")
_POLL_IN = select.POLLIN | select.POLLPRI if hasattr(select, "poll") else 0
_POLL_OUT = select.POLLOUT if hasattr(select, "poll") else 0
IN_PROCESS = not hasattr(select, "poll") or sys.platform == "win32"  # no pipes to poll: render here


class _Timeout(Exception):
    pass


class _Died(Exception):
    """The worker's end of a pipe closed."""


class _Stale(_Died):
    """The worker was gone before it received the request (safe to retry on another)."""


# The worker's first lines: lokal is imported from where this process imported it (a source tree
# without an install too), and ``-P`` keeps the current directory off sys.path.
_BOOT = """import os, sys
root = os.path.realpath(sys.argv[1])
if root not in map(os.path.realpath, sys.path):
    sys.path.insert(0, root)
from lokal.templates.render_worker import main
sys.exit(main(sys.argv[1:]))
"""
_ROOT = str(Path(sandbox.__file__).resolve().parent.parent.parent)


class _Worker:
    """One render worker process and its two pipes. Used by one thread at a time."""

    def __init__(self, render_s: float, limit_mib: int) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-c", _BOOT, _ROOT, str(req_r), str(resp_w), repr(render_s), str(limit_mib)],
                pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        except BaseException as exc:
            for fd in (req_w, resp_r):
                os.close(fd)
            if isinstance(exc, OSError):  # no processes left, no executable: refuse, do not render here
                raise TemplateError(f"the chat template renderer could not start: {exc}") from exc
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.req, self.resp = req_w, resp_r
        os.set_blocking(self.req, False)  # a write never outlasts the deadline
        self.closed = False
        self.last_used = time.monotonic()
        try:
            ready = self._read_frame(time.monotonic() + START_TIMEOUT_S)
        except (_Timeout, _Died):
            ready = b""
        except BaseException:  # KeyboardInterrupt while it starts: leave nothing behind
            self.close()
            raise
        if ready != b"R1":
            self.close()
            raise TemplateError("the chat template renderer did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None

    def killed_from_outside(self) -> bool:
        """Whether the process was ended by a signal this pool did not send (an operator, the OOM
        killer, a service manager stopping the whole group): the memory limit shows as
        MemoryError, or as an abort."""
        if self.closed:
            return False
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return False
        return code in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGHUP)

    def request(self, body: bytes, budget_s: float) -> tuple[bytes, bool, str]:
        """(status, whether the worker stays, text). Raises _Stale, _Died or _Timeout."""
        deadline = time.monotonic() + budget_s
        self._write(_HEADER.pack(len(body)) + body, deadline)
        reply = self._read_frame(deadline)
        if len(reply) < 2:
            raise _Died
        return reply[:1], reply[1:2] == b"1", reply[2:].decode("utf-8", "surrogatepass")

    def _wait(self, fd: int, events: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout
        poller = select.poll()
        poller.register(fd, events)
        if not poller.poll(max(1, int(left * 1000 + 0.999))):
            raise _Timeout

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.req, view):]
            except BlockingIOError:
                self._wait(self.req, _POLL_OUT, deadline)
            except (BrokenPipeError, OSError) as exc:
                raise _Stale from exc

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while n:
            self._wait(self.resp, _POLL_IN, deadline)
            try:
                chunk = os.read(self.resp, min(n, 1 << 20))
            except OSError as exc:
                raise _Died from exc
            if not chunk:
                raise _Died
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read_frame(self, deadline: float) -> bytes:
        (n,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        if n > MAX_REPLY_BYTES:
            raise _Died
        return self._read_exact(n, deadline)

    def close(self) -> None:
        """Kill the process (it holds no state) and close the pipes."""
        if self.closed:
            return
        self.closed = True
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always goes
            pass
        for fd in (self.req, self.resp):
            try:
                os.close(fd)
            except OSError:
                pass

    def forget(self) -> None:
        """In a forked child: drop the pipes, leave the process to its owner."""
        self.closed = True
        for fd in (self.req, self.resp):
            try:
                os.close(fd)
            except OSError:
                pass


class RenderPool:
    """Up to ``max_workers`` render workers, started when needed, shared by every thread."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []  # a stack: the most recently used worker on top
        self._workers: set[_Worker] = set()
        self._starting = 0
        self._closed = False
        self._forgotten = False

    def run(self, op: str, source: str, variables: dict[str, Any]) -> str:
        """Compile (``op`` "compile") or render ``source`` with ``variables`` in a worker.
        Raises TemplateError, whatever the template does."""
        try:
            body = pickle.dumps((op, source, variables), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TemplateError(f"chat template variables cannot be sent to the renderer: {exc}") from exc
        retries = self.max_workers  # every idle worker may have been killed from outside
        for attempt in range(retries + 1):
            worker = self._acquire()
            stays = False
            try:
                status, stays, text = worker.request(body, sandbox.MAX_RENDER_S + GRACE_S)
            except _Stale:
                if attempt < retries:
                    continue  # it died while idle (killed from outside): try another
                raise TemplateError("the chat template renderer is not available") from None
            except _Timeout:
                raise TemplateError(sandbox.timeout_message()) from None
            except _Died:
                if attempt < retries and worker.killed_from_outside():
                    continue  # killed (not by us) as the request went out: again, on another
                # MemoryError in the worker is answered; a worker that died of itself hit its limit
                raise TemplateError(sandbox.memory_message()) from None
            finally:
                self._release(worker, stays)
            if status == b"K":
                return text
            raise TemplateError(text)
        raise AssertionError("unreachable")  # pragma: no cover

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise TemplateError("the chat template renderer is shut down")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    self._workers.discard(worker)
                    worker.close()
                if len(self._workers) + self._starting < self.max_workers:
                    self._starting += 1
                    break
                self._cond.wait()
        started: _Worker | None = None
        try:
            started = _Worker(sandbox.MAX_RENDER_S, sandbox.MAX_RENDER_MIB)
        finally:
            with self._cond:
                self._starting -= 1
                if started is not None and not self._closed:
                    self._workers.add(started)
                self._cond.notify()
        if self._closed:
            started.close()
            raise TemplateError("the chat template renderer is shut down")
        return started

    def _release(self, worker: _Worker, stays: bool) -> None:
        retired = []
        with self._cond:
            if stays and not self._closed and worker.alive():
                worker.last_used = time.monotonic()
                self._idle.append(worker)
                # A burst may have started several workers: those left idle for long go.
                while len(self._idle) > 1 and self._idle[0].last_used < worker.last_used - IDLE_S:
                    retired.append(self._idle.pop(0))
                    self._workers.discard(retired[-1])
            else:
                self._workers.discard(worker)
                retired.append(worker)
            self._cond.notify()
        for old in retired:
            old.close()

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and diagnostics)."""
        with self._cond:
            return [w.pid for w in self._workers]

    def close(self) -> None:
        """Kill every worker; renders in flight fail with TemplateError."""
        if self._forgotten:
            return
        with self._cond:
            self._closed = True
            idle = list(self._idle)
            busy = [w for w in self._workers if w not in idle]
            self._workers.clear()
            self._idle.clear()
            self._cond.notify_all()
        for worker in busy:  # its thread sees the pipe close, and closes the rest
            try:
                worker.proc.kill()
            except OSError:
                pass
        for worker in idle:
            worker.close()

    def _forget(self) -> None:
        """In a forked child: this pool is the parent's; drop it without locking or killing."""
        self._forgotten = True
        for worker in list(self._workers):
            worker.forget()


_pool: RenderPool | None = None
_pool_lock = threading.Lock()


def pool() -> RenderPool:
    """This process's render pool (started on first use, closed at exit)."""
    global _pool
    current = _pool
    if current is None:
        with _pool_lock:
            if _pool is None:
                _pool = RenderPool()
                atexit.register(_pool.close)
            current = _pool
    return current


def _after_fork_in_child() -> None:
    global _pool, _pool_lock
    if _pool is not None:
        _pool._forget()
        atexit.unregister(_pool.close)
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def compile_check(source: str) -> None:
    """Raise TemplateError if ``source`` does not compile (in a worker, under the budget)."""
    if IN_PROCESS:
        sandbox.compile_template(source)
        return
    pool().run("compile", source, {})


def render(source: str, variables: dict[str, Any]) -> str:
    """``source`` rendered with ``variables`` in a worker, under the time and memory budget."""
    if IN_PROCESS:
        try:
            return sandbox.render_template(sandbox.compile_template(source), variables)
        except MemoryError:
            raise TemplateError(sandbox.memory_message()) from None
    return pool().run("render", source, variables)
