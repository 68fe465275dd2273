"""`lokal create / show --modelfile / cp / ps / stop` as a user runs them, on smollm2:135m."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lokal.store.model_store import ModelStore
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"

MODELFILE = '''# a pirate on top of smollm2
FROM smollm2:135m
PARAMETER temperature 0
PARAMETER num_predict 24
PARAMETER stop "<|im_end|>"
SYSTEM """You are a pirate.
Always answer like one."""
MESSAGE user Who are you?
MESSAGE assistant Arr, Captain Lokal be me name!
LICENSE """Apache-2.0"""
'''


def lokal(home: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
          timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lokal.cli.main", *args],
        env={**os.environ, "LOKAL_HOME": str(home), "COLUMNS": "200", **(env or {})},
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


@pytest.fixture
def home(model_home: Path, tmp_path: Path) -> Path:
    """A home of this test's own holding smollm2:135m (its blob hard-linked, not copied)."""
    shared = ModelStore(model_home)
    own = ModelStore(tmp_path / "home")
    own.import_file(shared.gguf_path(MODEL), MODEL)
    own.write_manifest(shared.get(MODEL))  # the catalog's parameters and source, too
    return own.home


def test_create_show_modelfile_and_recreate_from_it(home: Path, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(MODELFILE)
    created = lokal(home, "create", "pirate", cwd=tmp_path)  # ./Modelfile by default
    assert created.returncode == 0, created.stderr
    assert "created pirate:latest" in created.stdout
    store = ModelStore(home)
    pirate, base = store.get("pirate"), store.get(MODEL)
    assert pirate.digest == base.digest
    assert len(list(store.blobs_dir.iterdir())) == 1

    shown = lokal(home, "show", "pirate", "--modelfile")
    assert shown.returncode == 0, shown.stderr
    assert f"FROM {base.digest}" in shown.stdout and "# FROM pirate:latest" in shown.stdout
    assert 'MESSAGE assistant "Arr, Captain Lokal be me name!"' in shown.stdout
    assert "PARAMETER temperature 0" in shown.stdout and 'PARAMETER stop "<|im_end|>"' in shown.stdout

    (tmp_path / "Again").write_text(shown.stdout)
    again = lokal(home, "create", "pirate2", "-f", str(tmp_path / "Again"))
    assert again.returncode == 0, again.stderr
    copy = store.get("pirate2")
    assert (copy.system, copy.parameters, copy.messages, copy.license, copy.digest) == (
        pirate.system, pirate.parameters, pirate.messages, pirate.license, pirate.digest
    )

    assert lokal(home, "show", "pirate", "--system").stdout == "You are a pirate.\nAlways answer like one.\n"
    assert lokal(home, "show", "pirate", "--license").stdout.strip() == "Apache-2.0"
    params = lokal(home, "show", "pirate", "--parameters").stdout
    assert "num_predict" in params and "24" in params and '"<|im_end|>"' in params
    assert "<|im_start|>" in lokal(home, "show", "pirate", "--template").stdout


def test_a_created_model_runs_with_its_system_prompt_and_messages(home: Path, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(MODELFILE)
    assert lokal(home, "create", "pirate", "-f", str(tmp_path / "Modelfile")).returncode == 0

    from lokal.config import Settings
    from lokal.runtime.runtime import Runtime

    loaded = Runtime(Settings(home=home, parallel=1, ctx_size=512, threads=2)).load_sync("pirate", start_thread=False)
    try:
        rendered: list[str] = []
        render = loaded.template.render
        loaded.template.render = lambda messages, **kw: rendered.append(render(messages, **kw)) or rendered[-1]
        assert loaded.chat_prompt([{"role": "user", "content": "Hello"}])
        prompt = rendered[0]
        system = prompt.index("You are a pirate.")
        question = prompt.index("Who are you?")
        answer = prompt.index("Arr, Captain Lokal")
        assert system < question < answer < prompt.index("Hello")
        assert loaded.sampling().max_tokens == 24 and loaded.sampling().temperature == 0
    finally:
        loaded.close()

    ran = lokal(home, "run", "pirate", "What is your name?")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()


def test_create_from_a_gguf_path_relative_to_the_modelfile(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    os.link(ModelStore(home).gguf_path(MODEL), folder / "weights.gguf")
    (folder / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM short\n")
    r = lokal(home, "create", "local:v1", "-f", str(folder / "Modelfile"))  # run from elsewhere
    assert r.returncode == 0, r.stderr
    assert ModelStore(home).get("local:v1").digest == ModelStore(home).get(MODEL).digest


def test_cp_makes_a_second_name_for_the_same_blob(home: Path) -> None:
    r = lokal(home, "cp", MODEL, "copy:1")
    assert r.returncode == 0, r.stderr
    assert "copied" in r.stdout
    store = ModelStore(home)
    assert store.get("copy:1").digest == store.get(MODEL).digest
    assert len(list(store.blobs_dir.iterdir())) == 1


@pytest.mark.parametrize(
    ("modelfile", "args", "message"),
    [
        ("FROM smollm2:135m\nPARAMETER bogus 1\n", (), 'line 2: unknown parameter "bogus"'),
        ("FROM smollm2:135m\nADAPTER x.gguf\n", (), "adapter"),
        ("FROM nope-model\n", (), "not in the store"),
        ("FROM smollm2:135m\nTEMPLATE {{ .Tools }}\n", (), "jinja"),
        (None, ("-f", "/no/such/Modelfile"), "no such modelfile"),
        ("FROM smollm2:135m\n", ("--modelfile",), "choose one"),
    ],
)
def test_create_and_show_errors_are_one_line(
    home: Path, tmp_path: Path, modelfile: str | None, args: tuple[str, ...], message: str
) -> None:
    if modelfile is not None:
        (tmp_path / "Modelfile").write_text(modelfile)
    if args == ("--modelfile",):
        r = lokal(home, "show", MODEL, "--modelfile", "--system")
    else:
        r = lokal(home, "create", "x", *args, cwd=tmp_path)
    assert r.returncode == 1
    assert message in r.stderr.lower()
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1
    assert not ModelStore(home).exists("x")


def test_ps_and_stop_without_a_server_say_so_in_one_line(home: Path) -> None:
    from tests.integration.conftest import free_port

    for args in (("ps",), ("stop", MODEL)):
        r = lokal(home, *args, env={"LOKAL_PORT": str(free_port())})
        assert r.returncode == 1
        assert "lokal serve is not running at http://127.0.0.1:" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_ps_lists_a_loaded_model_and_stop_unloads_it(home: Path) -> None:
    server = LiveServer(home, "--model", MODEL, "--parallel", "1", "--ctx-size", "512")
    try:
        env = {"LOKAL_PORT": str(server.port)}
        listed = lokal(home, "ps", env=env)
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.strip().splitlines()
        assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
        assert any(row.strip().startswith(MODEL) and "from now" in row for row in rows), listed.stdout

        stopped = lokal(home, "stop", MODEL, env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert httpx.get(server.url + "/api/ps").json()["models"] == []
        assert MODEL not in lokal(home, "ps", env=env).stdout

        again = lokal(home, "stop", MODEL, env=env)
        assert again.returncode == 1 and "is not running" in again.stderr
    finally:
        server.stop()
