"""`lokal recommend` in a terminal asks for what no flag gave, then answers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect


def test_recommend_asks_the_questions_no_flag_answered(tmp_path: Path) -> None:
    env = {**os.environ, "LOKAL_HOME": str(tmp_path), "COLUMNS": "200", "NO_COLOR": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "lokal.cli.main", "recommend", "--api", "ollama"], env=env,
                          encoding="utf-8", timeout=60)
    child.expect("use case")
    child.sendline("batch")
    child.expect("users at the same time")
    child.sendline("2")
    child.expect("stay on this machine")
    child.sendline("y")
    child.expect("reachable from other machines")  # --api was given: not asked
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "lokal serve --model smollm2:135m --ctx-size 2048 --parallel 2" in child.before
    assert "API: Ollama clients" in child.before
    assert "API (openai" not in child.before
