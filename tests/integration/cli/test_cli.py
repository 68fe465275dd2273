"""The `lokal` command as a user runs it: real processes, a real terminal for the chat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"


def lokal(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lokal.cli.main", *args],
        env={**os.environ, "LOKAL_HOME": str(home), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=timeout,
    )


def test_version(model_home):
    r = lokal(model_home, "--version")
    assert r.returncode == 0 and r.stdout.startswith("lokal ")


def test_run_with_a_prompt_streams_an_answer_naming_paris(model_home):
    r = lokal(model_home, "run", MODEL, "What is the capital of France?", "--seed", "7", "--max-tokens", "60")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_list_and_show(model_home):
    listing = lokal(model_home, "list").stdout
    assert MODEL in listing and "Q4_1" in listing and "MB" in listing
    shown = lokal(model_home, "show", MODEL).stdout
    for expected in ("llama", "Q4_1", "8192", "135M", "Apache-2.0", "<|im_start|>"):
        assert expected in shown


@pytest.mark.parametrize(
    "args, message",
    [
        (("show", "nope:1b"), "not found"),
        (("rm", "nope:1b"), "not found"),
        (("run", "../../etc/passwd", "hi"), "invalid model name"),
        (("pull", "no-such-model"), "unknown model"),
    ],
)
def test_user_errors_are_one_line_without_traceback(model_home, args, message):
    r = lokal(model_home, *args)
    assert r.returncode == 1
    assert message in r.stderr.lower()
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_import_refuses_a_file_that_is_not_gguf(model_home, tmp_path):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    r = lokal(tmp_path / "home", "import", str(bad), "--name", "fake")
    assert r.returncode == 1 and "not a valid GGUF" in r.stderr
    assert lokal(tmp_path / "home", "list").stdout.count("fake") == 0


def test_interactive_chat_keeps_history_ctrl_c_stops_an_answer_and_bye_leaves(model_home):
    child = pexpect.spawn(
        sys.executable, ["-m", "lokal.cli.main", "run", MODEL, "--seed", "3"],
        env={**os.environ, "LOKAL_HOME": str(model_home)}, encoding="utf-8", timeout=120,
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("My name is Ada. Say hi to me.")
        child.expect_exact(">>> ")
        child.sendline("Write a very long essay about the history of Rome.")
        child.expect_exact("history of Rome.")  # the terminal's echo of the line
        child.expect(r"\w+")  # the answer has started streaming
        child.sendintr()
        child.expect_exact("stopped")
        child.expect_exact(">>> ")  # the program is still here
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
