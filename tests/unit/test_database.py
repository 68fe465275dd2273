"""lokal's one SQLite file: write transactions and migrations, shared by the web UI and the Responses API."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lokal import database
from lokal.server.responses.store import ResponseStore


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with database.connect(tmp_path / "db" / "x.sqlite3") as conn:  # the folder is made
        conn.execute("CREATE TABLE t (v INTEGER)")
        with pytest.raises(RuntimeError), database.write(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("half-way")
        with database.write(conn):
            conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]


def test_a_file_from_a_newer_lokal_is_refused_not_downgraded(tmp_path: Path) -> None:
    path = tmp_path / "ui.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_versions VALUES ('responses', 99)")
    with pytest.raises(RuntimeError, match="has schema 99"):
        ResponseStore(path, retention_s=0).get("resp_x", "")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_versions").fetchall() == [(99,)]
