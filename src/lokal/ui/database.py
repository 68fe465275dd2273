"""The web UI's SQLite file (``$LOKAL_HOME/ui.sqlite3``): its schema, versioned, and transactions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        system_prompt TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        stats TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        UNIQUE (conversation_id, position)
    );
    CREATE TABLE presets (
        name TEXT PRIMARY KEY,
        params TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE arena_votes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        left_label TEXT NOT NULL,
        right_label TEXT NOT NULL,
        winner TEXT NOT NULL CHECK (winner IN ('left', 'right', 'tie')),
        created_at REAL NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class UiDatabase:
    """One SQLite file; every write runs in its own ``BEGIN IMMEDIATE`` transaction, so
    concurrent writers (threads or processes) wait for each other instead of interleaving."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._migrate_lock = threading.Lock()
        self._migrated = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            yield conn
        finally:
            conn.close()

    def _migrate(self) -> None:
        with self._migrate_lock:
            if self._migrated:
                return
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    if version > SCHEMA_VERSION:
                        raise RuntimeError(f"{self.path} has schema {version}; this lokal knows {SCHEMA_VERSION}")
                    for script in MIGRATIONS[version:]:
                        for statement in script.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            self._migrated = True

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction: committed on success, rolled back on error."""
        self._migrate()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (one consistent snapshot per statement)."""
        self._migrate()
        with self._connect() as conn:
            yield conn
