"""The key store: only hashes on disk, 0600, atomic, revocation seen by other readers."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lokal.server.security.keys import KEY_PREFIX, KeyStore, KeyStoreError


def test_created_key_verifies_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    assert not store.enabled()
    key = store.create("ci")
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert store.enabled()
    assert store.verify(key) == "ci"
    text = store.path.read_text()
    assert key not in text
    assert json.loads(text)["keys"][0]["name"] == "ci"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_wrong_keys_do_not_verify(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key = store.create("ci")
    for wrong in ("", "lokal-", key[:-1], key + "x", "Bearer " + key, key.upper()):
        assert store.verify(wrong) is None


def test_revoke_is_seen_by_another_reader_of_the_same_home(tmp_path: Path) -> None:
    server_side = KeyStore(tmp_path)
    cli_side = KeyStore(tmp_path)
    key_a, key_b = cli_side.create("a"), cli_side.create("b")
    assert server_side.verify(key_a) == "a" and server_side.verify(key_b) == "b"
    cli_side.revoke("a")
    assert server_side.verify(key_a) is None
    assert server_side.verify(key_b) == "b"
    cli_side.revoke("b")
    assert not server_side.enabled()


def test_duplicate_unknown_and_bad_names_are_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.create("ci")
    with pytest.raises(KeyStoreError, match="exists"):
        store.create("ci")
    with pytest.raises(KeyStoreError, match="no key"):
        store.revoke("nope")
    for bad in ("", "-x", "a b", "x" * 65, "../etc", "é"):
        with pytest.raises(KeyStoreError, match="invalid key name"):
            store.create(bad)


def test_no_temp_files_are_left_behind(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    for i in range(5):
        store.create(f"k{i}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]


def test_per_key_limits_are_stored_and_negative_ones_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.create("a", rpm=10, tpm=0)
    store.create("b")
    assert (store.keys()["a"].rpm, store.keys()["a"].tpm) == (10, 0)
    assert (store.keys()["b"].rpm, store.keys()["b"].tpm) == (None, None)
    with pytest.raises(KeyStoreError, match="0 \\(unlimited\\) or more"):
        store.create("c", rpm=-1)
