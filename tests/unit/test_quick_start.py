"""The README's test command is what CI runs, and the install builds llama.cpp as lokal needs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "scripts/install.sh test && .venv/bin/python -m pytest"
    assert command in readme
    assert command in ci


def test_llama_cpp_is_lokals_build_with_kernel_modes():
    from lokal.engine.llama_model import kernel_modes

    assert kernel_modes() is not None, "run scripts/install.sh: batching would change results"
