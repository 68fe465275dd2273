"""Chat templates render where a time and a memory budget hold: in worker processes, not in the
caller. A hostile template fails with TemplateError within ~3 s and without growing the caller's
memory; normal templates render exactly as before, from many threads, after a worker was killed."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lokal.templates.chat_template import CHATML_TEMPLATE, GEMMA_TEMPLATE, MAX_RENDER_S, ChatTemplate, TemplateError

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="Linux: RLIMIT_AS and /proc")

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
NESTED_LOOPS = "{% set s = '" + "x" * 40_000 + "' %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
CENTER = "{{ 'x'|center(1000000000) }}"
BUDGET_S = MAX_RENDER_S + 1.0  # "within ~3 s": the 2 s budget, the kill, and a margin for slow machines


def _pids() -> list[int]:
    from lokal.templates import render_pool

    return render_pool.pool().pids()


def _warm() -> None:
    """Start a worker first, so that timings below are the render's, not an interpreter start's."""
    assert ChatTemplate(CHATML_TEMPLATE).render(MESSAGES)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(30)
def test_nested_loops_over_a_long_literal_fail_within_the_budget() -> None:
    _warm()
    started = time.perf_counter()
    with pytest.raises(TemplateError, match=f"took longer than {MAX_RENDER_S:g} s to render"):
        ChatTemplate(NESTED_LOOPS).render([{"role": "user", "content": "hi"}])
    assert time.perf_counter() - started < BUDGET_S


@pytest.mark.timeout(30)
def test_a_model_template_looping_over_message_text_fails_within_the_budget() -> None:
    source = ("{% set c = messages[0]['content'] %}{% for a in c %}{% for b in c %}{% endfor %}{% endfor %}"
              "{{ c[:1] }}")
    template = ChatTemplate.for_model(source, "llama", "<s>", "</s>")
    _warm()
    started = time.perf_counter()
    with pytest.raises(TemplateError, match="took longer than"):
        template.render([{"role": "user", "content": "y" * 40_000}])
    assert time.perf_counter() - started < BUDGET_S


@pytest.mark.timeout(60)
def test_center_a_billion_fails_fast_without_growing_the_callers_memory() -> None:
    _warm()
    peak = _peak_rss_mib()
    started = time.perf_counter()
    with pytest.raises(TemplateError, match=r"needed more than \d+ MiB to render"):
        ChatTemplate(CENTER).render(MESSAGES)
    assert time.perf_counter() - started < BUDGET_S
    assert _peak_rss_mib() - peak < 100


@pytest.mark.timeout(60)
def test_memory_doubling_through_concatenation_is_stopped_by_the_limit() -> None:
    source = "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    peak = _peak_rss_mib()
    with pytest.raises(TemplateError, match="needed more than"):
        ChatTemplate(source).render(MESSAGES)
    assert _peak_rss_mib() - peak < 100


def test_normal_templates_render_identically_in_a_worker_process() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with_tools = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}{{ eos_token }}"
                  "{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}"
                  "{% if add_generation_prompt %}<gen>{% endif %}")
    odd = [{"role": "user", "content": " é \u2603 \ud83d\ude00 \ud800 \x00 "}]  # a lone surrogate survives too
    assert ChatTemplate(CHATML_TEMPLATE).render(MESSAGES) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>").render(MESSAGES, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")
    assert ChatTemplate(with_tools, "<s>", "</s>").render(odd, tools=tools) == (
        '<s>[user]é \u2603 \ud83d\ude00 \ud800 \x00</s>[{"function": {"name": "get_weather", "parameters": '
        '{"type": "object"}}, "type": "function"}]<gen>')
    pids = _pids()
    assert pids and os.getpid() not in pids


def test_the_worker_is_a_clean_interpreter_under_a_memory_limit() -> None:
    from lokal.templates.sandbox import MAX_RENDER_MIB

    _warm()
    for pid in _pids():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(b"lokal.templates.render_worker" in arg for arg in cmdline)
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "llama" not in maps and "ggml" not in maps  # exec'd fresh: nothing of the parent's libraries
        limit = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                     if line.startswith("Max address space"))
        soft = int(limit.split()[3])
        assert soft < (MAX_RENDER_MIB + 256) * 2**20


@pytest.mark.timeout(60)
def test_renders_from_many_threads_at_once_beside_a_hostile_one() -> None:
    template = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    failures: list[str] = []
    hostile_error: list[str] = []

    def normal(i: int) -> None:
        for j in range(25):
            text = f"thread {i} turn {j} " + "z" * (i * 100)
            got = template.render([{"role": "user", "content": text}])
            if got != f"<user>{text}":
                failures.append(got[:80])

    def hostile() -> None:
        try:
            ChatTemplate(NESTED_LOOPS).render(MESSAGES)
        except TemplateError as exc:
            hostile_error.append(str(exc))

    threads = [threading.Thread(target=normal, args=(i,)) for i in range(16)] + [threading.Thread(target=hostile)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert not failures
    assert hostile_error and "took longer than" in hostile_error[0]
    assert time.perf_counter() - started < 20
    from lokal.templates.render_pool import MAX_WORKERS

    assert len(_pids()) <= MAX_WORKERS


@pytest.mark.timeout(60)
def test_rendering_goes_on_after_a_worker_was_killed() -> None:
    template = ChatTemplate(CHATML_TEMPLATE)
    expected = template.render(MESSAGES)
    for _ in range(5):  # killed from outside while idle (an operator, the OOM killer): not the caller's fault
        busy = [threading.Thread(target=lambda: [template.render(MESSAGES) for _ in range(20)]) for _ in range(6)]
        for t in busy:
            t.start()
        for t in busy:
            t.join()
        for pid in _pids():  # several idle workers, all dead: the next render still gets an answer
            os.kill(pid, signal.SIGKILL)
        assert template.render(MESSAGES) == expected
    before = set(_pids())
    with pytest.raises(TemplateError, match="took longer than"):  # killed by the pool at the deadline
        ChatTemplate(NESTED_LOOPS).render(MESSAGES)
    assert template.render(MESSAGES) == expected
    with pytest.raises(TemplateError, match="needed more than"):  # died of its memory limit
        ChatTemplate(CENTER).render(MESSAGES)
    assert template.render(MESSAGES) == expected
    assert not any(_alive(pid) for pid in before - set(_pids()))


def test_compile_errors_come_back_from_the_worker() -> None:
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")  # RecursionError, not a crash


WORKER_PIDS = """
import sys, time
from lokal.templates import render_pool
from lokal.templates.chat_template import CHATML_TEMPLATE, ChatTemplate
ChatTemplate(CHATML_TEMPLATE).render([{"role": "user", "content": "hi"}])
print(*render_pool.pool().pids(), flush=True)
if sys.argv[1] == "linger":
    time.sleep(60)
"""


def _wait_gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(60)
def test_workers_end_with_their_process() -> None:
    done = subprocess.run([sys.executable, "-c", WORKER_PIDS, "exit"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids and _wait_gone(pids)
    # A parent killed outright (no atexit): its idle workers see their pipe close and go.
    proc = subprocess.Popen([sys.executable, "-c", WORKER_PIDS, "linger"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids and all(_alive(pid) for pid in pids)
    finally:
        proc.kill()
        proc.wait()
    assert _wait_gone(pids)
