"""The store against hostile files and killed processes: GGUFs llama.cpp cannot load are refused
wherever a file enters the store; the store owns its bytes (a copy, never a link to the user's
file); what a killed import or pull leaves in tmp/ is cleaned when the store is opened, but only
when no live process holds it, and what a later pull resumes is kept; pip dies with its pull."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gguf import GGUFWriter

from lokal.store import digests
from lokal.store.catalog import CatalogEntry, WheelPart
from lokal.store.create import create_model
from lokal.store.errors import InvalidGguf
from lokal.store.gguf_facts import read_gguf_facts
from lokal.store.lock import FileLock
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import Modelfile
from tests.conftest import write_tiny_gguf
from tests.unit.store.test_model_store import files_under, sha256_of

MakeGguf = Callable[..., Path]


def set_u32(path: Path, key: str, value: int) -> Path:
    """Overwrite the UINT32 value of metadata ``key`` in the GGUF file at ``path``."""
    data = bytearray(path.read_bytes())
    needle = struct.pack("<Q", len(key)) + key.encode()
    at = data.find(needle)
    assert at >= 0, key
    at += len(needle)
    assert struct.unpack_from("<I", data, at)[0] == 4, f"{key} is not a UINT32"  # GGUFValueType.UINT32
    struct.pack_into("<I", data, at + 4, value)
    path.write_bytes(bytes(data))
    return path


def gguf_without_tensors(path: Path) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def bad_gguf(kind: str, tiny_gguf: MakeGguf, folder: Path) -> tuple[Path, str]:
    """A well-formed GGUF llama.cpp refuses, and the words the refusal must contain."""
    if kind == "unknown architecture":
        return tiny_gguf("llamb.gguf", arch="llamb"), "unknown architecture 'llamb'"
    if kind == "projector":
        return tiny_gguf("mmproj.gguf", arch="clip"), "multimodal projector"
    if kind == "no tensors":
        return gguf_without_tensors(folder / "empty.gguf"), "no tensors"
    key = {
        "zero heads": "llama.attention.head_count",
        "zero kv heads": "llama.attention.head_count_kv",
        "zero embedding length": "llama.embedding_length",
        "zero blocks": "llama.block_count",
    }[kind]
    return set_u32(tiny_gguf(f"{kind.replace(' ', '-')}.gguf"), key, 0), f"{key} is 0"


BAD_KINDS = ["unknown architecture", "projector", "no tensors", "zero heads", "zero kv heads",
             "zero embedding length", "zero blocks"]


# -- item 6: GGUFs llama.cpp cannot load never enter the store ---------------------------------


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_import_refuses_a_gguf_llama_cpp_cannot_load(store: ModelStore, tiny_gguf: MakeGguf, tmp_path: Path,
                                                     kind: str) -> None:
    path, reason = bad_gguf(kind, tiny_gguf, tmp_path)
    read_gguf_facts(path)  # a well-formed GGUF: only llama.cpp would refuse it
    with pytest.raises(InvalidGguf) as caught:
        store.import_file(path, "bad")
    message = str(caught.value)
    assert f"{path} cannot be loaded by llama.cpp" in message and reason in message
    assert "\n" not in message
    assert store.list() == [] and files_under(store.home) == []


def test_a_special_token_outside_the_vocabulary_is_refused(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    # llama.cpp falls back to its default ids for a WordPiece (bert) vocabulary, [CLS] = 101 and so
    # on, and its tokenizer aborts the process on an id past the end of a 64-token vocabulary.
    with pytest.raises(InvalidGguf, match="bos token would be id 101, outside its vocabulary of 64 tokens"):
        store.import_file(tiny_gguf("wpm.gguf", tokenizer_model="bert"), "bad")
    with pytest.raises(InvalidGguf, match="bos token would be id 11, outside its vocabulary of 8 tokens"):
        store.import_file(tiny_gguf("bpe.gguf", tokenizer_model="gpt2", n_vocab=8), "bad")
    # an SPM vocabulary's defaults (0, 1, 2) fit in it
    assert store.import_file(tiny_gguf("spm.gguf", tokenizer_model="llama"), "ok").facts.architecture == "llama"
    assert store.list() and [m.name for m in store.list()] == ["ok:latest"]


def test_an_unknown_architecture_is_named_with_the_closest_known_one(store: ModelStore,
                                                                     tiny_gguf: MakeGguf) -> None:
    with pytest.raises(InvalidGguf, match="did you mean 'llama'"):
        store.import_file(tiny_gguf(arch="llamb"), "bad")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_create_from_a_gguf_path_refuses_a_gguf_llama_cpp_cannot_load(store: ModelStore, tiny_gguf: MakeGguf,
                                                                      tmp_path: Path, kind: str) -> None:
    path, reason = bad_gguf(kind, tiny_gguf, tmp_path)
    with pytest.raises(InvalidGguf, match=reason):
        create_model(store, "bad", Modelfile(from_=str(path)))
    assert store.list() == [] and files_under(store.home) == []


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_create_from_an_uploaded_blob_refuses_one_llama_cpp_cannot_load(store: ModelStore, tiny_gguf: MakeGguf,
                                                                        tmp_path: Path, kind: str) -> None:
    path, reason = bad_gguf(kind, tiny_gguf, tmp_path)
    digest = store.add_blob(path)  # what POST /api/blobs/<digest> stores, before POST /api/create
    with pytest.raises(InvalidGguf, match=reason):
        create_model(store, "bad", Modelfile(from_=digest), allow_paths=False)
    assert store.list() == []


def test_a_stored_model_llama_cpp_cannot_load_is_refused_by_name_with_the_reason(store: ModelStore,
                                                                                 tiny_gguf: MakeGguf) -> None:
    """A model imported before lokal checked (its manifest written directly here): asking for its
    file names the model and the reason instead of handing llama.cpp a file it cannot load."""
    path = tiny_gguf(arch="llamb")
    digest = store.add_blob(path)
    facts = read_gguf_facts(path)
    store.write_manifest(Manifest(name="old:latest", digest=digest, size=path.stat().st_size,
                                  source=f"file:{path}", facts=facts))
    with pytest.raises(InvalidGguf) as caught:
        store.gguf_path("old")
    assert 'model "old:latest" cannot be loaded by llama.cpp' in str(caught.value)
    assert "unknown architecture 'llamb'" in str(caught.value)


def test_models_llama_cpp_can_load_are_accepted(store: ModelStore, tiny_gguf: MakeGguf, tmp_path: Path) -> None:
    assert store.import_file(tiny_gguf(), "ok").facts.architecture == "llama"
    assert store.gguf_path("ok") == store.blob_path(store.get("ok").digest)
    # A state-space model has no attention: its converter writes 0 heads, and llama.cpp loads it.
    mamba = set_u32(tiny_gguf("mamba.gguf", arch="mamba", seed=2), "mamba.attention.head_count", 0)
    assert store.import_file(mamba, "ssm").facts.head_count == 0


def installed_libllama() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "lib" / "libllama.so"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the Linux build of libllama")
def test_the_architecture_list_is_the_installed_llama_cpps() -> None:
    """LLM_ARCH_NAMES's strings lie in libllama.so in order, "clip" first, "(unknown)" last; names
    that are the tail of a longer string ("bert" of "modern-bert") are merged into it by the linker."""
    from lokal.store.loadable import LLAMA_CPP_ARCHITECTURES

    data = installed_libllama().read_bytes()
    start = data.find(b"\0clip\0llama\0")
    end = data.find(b"\0(unknown)\0", start)
    assert start >= 0 and end > start, "LLM_ARCH_NAMES not found in libllama.so"
    in_library = {name.decode() for name in data[start + 1 : end].split(b"\0") if name}
    assert in_library - LLAMA_CPP_ARCHITECTURES == set(), "architectures to add to LLAMA_CPP_ARCHITECTURES"
    # The others are in the library as the tails of longer strings ("modern-bert\0" holds "bert\0").
    assert LLAMA_CPP_ARCHITECTURES - in_library == {"bert", "qwen", "qwen2", "glm4", "rwkv7"}
    assert all(name.encode() + b"\0" in data for name in LLAMA_CPP_ARCHITECTURES)


# -- item 7: the store owns its bytes ----------------------------------------------------------


def scribble(path: Path) -> None:
    """Change bytes of the file in place (same inode, same size), as an editor or a tool would."""
    with open(path, "r+b") as f:
        f.seek(-64, os.SEEK_END)
        f.write(b"\x5a" * 64)


def assert_intact(store: ModelStore, name: str, digest: str) -> None:
    manifest = store.get(name)
    blob = store.blob_path(manifest.digest)
    assert manifest.digest == digest == sha256_of(blob)
    assert blob.stat().st_size == manifest.size and blob.stat().st_nlink == 1
    assert [m.name for m in store.list()] == [manifest.name]


def test_editing_the_imported_file_in_place_does_not_change_the_model(store: ModelStore,
                                                                      tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    digest = sha256_of(src)
    store.import_file(src, "mine")
    assert store.blob_path(digest).stat().st_ino != src.stat().st_ino
    scribble(src)
    assert sha256_of(src) != digest
    assert_intact(store, "mine:latest", digest)


def test_truncating_or_deleting_the_imported_file_does_not_lose_the_model(store: ModelStore,
                                                                          tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    digest = sha256_of(src)
    store.import_file(src, "mine")
    os.truncate(src, 100)
    assert_intact(store, "mine:latest", digest)
    src.unlink()
    assert_intact(store, "mine:latest", digest)


def test_a_model_created_from_a_gguf_path_does_not_depend_on_the_file(store: ModelStore,
                                                                      tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf(seed=4)
    digest = sha256_of(src)
    create_model(store, "made", Modelfile(from_=str(src), system="hi"))
    scribble(src)
    assert_intact(store, "made:latest", digest)
    os.truncate(src, 0)
    assert_intact(store, "made:latest", digest)


def test_reimporting_repairs_a_blob_changed_behind_the_stores_back(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    digest = sha256_of(src)
    store.import_file(src, "mine")
    blob = store.blob_path(digest)
    blob.chmod(0o644)
    scribble(blob)  # a blob linked to a user's file by an older lokal, then edited
    store.import_file(src, "mine")
    assert_intact(store, "mine:latest", digest)


def test_the_copy_is_a_reflink_where_the_filesystem_supports_one(store: ModelStore, tiny_gguf: MakeGguf,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def clone(dst_fd: int, request: int, src_fd: int) -> int:  # what FICLONE does, byte for byte
        calls.append(request)
        os.lseek(src_fd, 0, os.SEEK_SET)
        while chunk := os.read(src_fd, 1 << 16):
            os.write(dst_fd, chunk)
        return 0

    monkeypatch.setattr(digests.fcntl, "ioctl", clone)
    src = tiny_gguf()
    manifest = store.import_file(src, "mine")
    assert calls == [digests.FICLONE]
    assert manifest.digest == sha256_of(src) == sha256_of(store.blob_path(manifest.digest))


def test_without_reflinks_the_file_is_streamed_and_hashed_as_it_is_copied(store: ModelStore, tiny_gguf: MakeGguf,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(digests.fcntl, "ioctl", unsupported)
    src = tiny_gguf()
    manifest = store.import_file(src, "mine")
    assert manifest.digest == sha256_of(src) == sha256_of(store.blob_path(manifest.digest))
    assert files_under(store.tmp_dir) == []


def test_a_copy_that_cannot_fit_on_the_disk_is_refused_before_writing(store: ModelStore, tiny_gguf: MakeGguf,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lokal.store.errors import StoreError

    real = os.fstatvfs
    monkeypatch.setattr(digests.os, "fstatvfs", lambda fd: os.statvfs_result((*real(fd)[:4], 0, *real(fd)[5:])))
    with pytest.raises(StoreError, match="not enough disk space"):
        store.import_file(tiny_gguf(), "mine")
    assert store.list() == [] and files_under(store.home) == []


# -- item 11: temp files ---------------------------------------------------------------------


def _import_or_create(home: Path, src: Path, i: int) -> None:
    store = ModelStore(home)
    if i % 2:
        store.import_file(src, f"imported{i}")
    else:
        create_model(store, f"created{i}", Modelfile(from_=str(src)))


def test_parallel_imports_and_creates_of_one_file_leave_no_partial_files(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(6):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        src = write_tiny_gguf(folder / "model.gguf", seed=round_)
        home = folder / "home"
        procs = [context.Process(target=_import_or_create, args=(home, src, i)) for i in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        assert files_under(home / "tmp") == []
        assert files_under(home / "blobs") == [f"sha256-{sha256_of(src).split(':')[1]}"]


HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def hold_lock() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Start a process that holds the flock of a file (a live import, pull or pip)."""
    procs: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_opening_the_store_removes_partial_copies_no_live_process_holds(
    tmp_path: Path, hold_lock: Callable[[Path], subprocess.Popen[str]]
) -> None:
    tmp = tmp_path / "home" / "tmp"
    tmp.mkdir(parents=True)
    dead = tmp / "blob-0123.partial"
    dead.write_bytes(b"x" * 4096)  # what an import killed with kill -9 leaves
    live = tmp / "blob-4567.partial"
    live.write_bytes(b"y" * 4096)
    holder = hold_lock(live)  # an import still copying
    ModelStore(tmp_path / "home")
    assert not dead.exists() and live.exists()
    holder.kill()
    holder.wait()
    ModelStore(tmp_path / "home")
    assert not live.exists()


def make_pull_leftovers(tmp: Path, name: str) -> dict[str, Path]:
    """What a catalog pull and an hf.co pull killed mid-way leave in tmp/."""
    work = tmp / f"pull-{name}"
    paths = {
        "pip temp": work / "staging" / "tmp" / "pip-unpack-x" / "part.whl",
        "joined": work / "model.gguf.partial",
        "wheel": work / "wheels" / "pkg-1.0.whl",
        "hf partial": work / "files" / f"{'ab' * 32}.partial",
        "lock": tmp / f"pull-{name}.lock",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"z" * 1000)
    paths["lock"].write_bytes(b"")
    return paths


def test_opening_the_store_cleans_a_dead_pull_but_keeps_what_the_next_pull_resumes(tmp_path: Path) -> None:
    tmp = tmp_path / "home" / "tmp"
    left = make_pull_leftovers(tmp, "smollm2-135m")
    orphan_lock = tmp / "pull-gemma3-270m.lock"
    orphan_lock.write_bytes(b"")
    ModelStore(tmp_path / "home")
    assert not left["pip temp"].exists() and not (tmp / "pull-smollm2-135m" / "staging").exists()
    assert not left["joined"].exists()
    assert left["wheel"].exists() and left["hf partial"].exists()  # resumed by the next pull
    assert not left["lock"].exists() and not orphan_lock.exists()  # empty lock files do not pile up


def test_opening_the_store_leaves_a_running_pull_alone(tmp_path: Path,
                                                       hold_lock: Callable[[Path], subprocess.Popen[str]]) -> None:
    tmp = tmp_path / "home" / "tmp"
    left = make_pull_leftovers(tmp, "smollm2-135m")
    hold_lock(left["lock"])
    ModelStore(tmp_path / "home")
    assert all(path.exists() for path in left.values())


def test_a_finished_pull_leaves_nothing_in_tmp(tmp_path: Path) -> None:
    from lokal.store.sources.pypi import PypiSource

    index = FakeIndex(tmp_path, write_tiny_gguf(tmp_path / "model.gguf"))
    store = ModelStore(tmp_path / "home")
    PypiSource(store, python=str(index.python)).pull(index.entry, index.name, lambda _: None)
    assert store.exists(index.name)
    assert list(store.tmp_dir.iterdir()) == []


def test_a_lock_file_removed_by_its_holder_is_not_shared_by_two_waiters(tmp_path: Path) -> None:
    path = tmp_path / "pull-x.lock"
    first = FileLock(path)
    assert first.acquire()
    second = FileLock(path)
    took = threading.Event()
    waiter = threading.Thread(target=lambda: (second.acquire(), took.set()))
    waiter.start()
    time.sleep(0.2)
    assert not took.is_set()
    first.release(remove=True)  # the waiter was blocked on the file just removed
    waiter.join(5)
    assert took.is_set() and second.fd is not None
    assert os.fstat(second.fd).st_ino == path.stat().st_ino  # it holds the file the path names
    third = FileLock(path)
    assert not third.acquire(blocking=False)
    second.release(remove=True)
    assert not path.exists()


# A stand-in for `python -m pip download ... --dest DIR REQ`: serves a prepared wheel through
# $TMPDIR, or (with "hang") writes its pid and a partial download, then hangs as a slow pip would.
FAKE_PIP = """#!{python}
import json, os, shutil, sys, time
config = json.load(open({config!r}))
args = sys.argv
dest, requirement = args[args.index("--dest") + 1], args[-1]
if config.get("hang"):
    with open(os.path.join(os.environ["TMPDIR"], "partial-download"), "wb") as f:
        f.write(b"x" * 100000)
    with open(config["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
wheel = config["wheels"][requirement]
shutil.copy(wheel, os.path.join(os.environ["TMPDIR"], "download.whl"))
shutil.copy(wheel, os.path.join(dest, os.path.basename(wheel)))
"""


class FakeIndex:
    """One wheel holding a GGUF, and a fake pip that serves it."""

    def __init__(self, root: Path, gguf: Path, hang: bool = False) -> None:
        import json
        import zipfile

        from lokal.store.names import parse_model_name

        data = gguf.read_bytes()
        member = "tiny_part1/data/model.gguf"
        wheel = root / "tiny_part1-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(member, data)
        self.entry = CatalogEntry(name="tiny:1", description="test", parts=(WheelPart("tiny-part1", "1.0", member),),
                                  sha256=hashlib.sha256(data).hexdigest(), size=len(data), license="MIT")
        self.name = parse_model_name("tiny:1")
        self.pid_file = root / "pip.pid"
        config = root / "fake-pip.json"
        config.write_text(json.dumps({"wheels": {"tiny-part1==1.0": str(wheel)}, "hang": hang,
                                      "pid_file": str(self.pid_file)}))
        self.python = root / "fake-python"
        self.python.write_text(FAKE_PIP.format(python=sys.executable, config=str(config)))
        self.python.chmod(0o755)


PULL = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests.unit.store.test_store_hostile import FakeIndex
    from lokal.store.model_store import ModelStore
    from lokal.store.sources.pypi import PypiSource
    root = Path(sys.argv[2])
    index = FakeIndex(root, root / "model.gguf", hang=True)
    PypiSource(ModelStore(root / "home"), python=str(index.python)).pull(index.entry, index.name, lambda _: None)
""")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie nobody has reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_pull_killed_with_kill_9_takes_pip_with_it_and_its_leftovers_go_at_the_next_open(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "model.gguf")
    repo = Path(__file__).resolve().parents[3]
    puller = subprocess.Popen([sys.executable, "-c", PULL, str(repo), str(tmp_path)])
    pid_file = tmp_path / "pip.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        assert puller.poll() is None, "the pull ended before pip started"
        time.sleep(0.05)
    pip = int(pid_file.read_text())
    try:
        os.kill(puller.pid, signal.SIGKILL)
        puller.wait()
        deadline = time.monotonic() + 10
        while alive(pip) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pip), "pip outlived the pull it was downloading for"
    finally:
        if alive(pip):
            os.kill(pip, signal.SIGKILL)
    store = ModelStore(tmp_path / "home")
    assert list(store.tmp_dir.iterdir()) == []  # pip's partial download and the lock file are gone


def test_partial_files_are_locked_while_they_are_written(store: ModelStore) -> None:
    with store.partial_file() as (path, out):
        out.write(b"data")
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert store.clean_tmp() == [] and path.exists()
    assert not path.exists()


def test_clean_up_never_touches_blobs_or_manifests(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    store.import_file(tiny_gguf(), "mine")
    before = files_under(store.home)
    ModelStore(store.home)
    assert files_under(store.home) == before


def test_a_stale_upload_is_removed_only_once_untouched_for_an_hour(store: ModelStore) -> None:
    store.tmp_dir.mkdir(parents=True)
    fresh, stale = store.tmp_dir / "upload-1.partial", store.tmp_dir / "upload-2.partial"
    fresh.write_bytes(b"a")
    stale.write_bytes(b"b")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    assert store.clean_tmp() == [stale]
    assert fresh.exists()
