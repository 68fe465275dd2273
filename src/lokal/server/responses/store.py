"""Stored responses: the Responses API's ``store`` and ``previous_response_id``.

They live in the SQLite file the web UI keeps its chats in (``Settings.database_path``), in their
own table with its own schema version (``schema_versions``), so neither side's migrations touch
the other's tables. Each response is one row, written in one transaction: the response object as
served, and its conversation (every input item it was generated from, earlier turns included), so
a continuation reads one row and nothing is ever stored half-written. A row belongs to the API key
that created it (``owner``; empty when keys are off): any other key is told it does not exist.
Rows older than the retention are purged on every write and never read back."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal import database

COMPONENT = "responses"
# Each entry upgrades this table's schema by one version; never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        conversation TEXT NOT NULL
    );
    CREATE INDEX responses_by_age ON responses (created_at)
    """,
]


@dataclass(frozen=True)
class StoredResponse:
    """A response as served (``body``) and the input items it was generated from (``conversation``)."""

    id: str
    owner: str
    body: dict[str, Any]
    conversation: list[dict[str, Any]]


class ResponseStore:
    """Stored responses in one SQLite file; ``retention_s`` 0 keeps them forever. Methods block:
    call them from a worker thread in async code."""

    def __init__(self, path: Path, retention_s: float) -> None:
        self.path = path
        self.retention_s = retention_s
        self._lock = threading.Lock()
        self._migrated = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with database.connect(self.path) as conn:
            if not self._migrated:
                self._migrate(conn)
            yield conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if self._migrated:
                return
            conn.execute("PRAGMA journal_mode = WAL")
            with database.write(conn):
                conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, "
                             "version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (COMPONENT,)).fetchone()
                database.migrate(conn, MIGRATIONS, int(row[0]) if row else 0, f"{self.path}: stored responses")
                conn.execute("INSERT OR REPLACE INTO schema_versions VALUES (?, ?)", (COMPONENT, len(MIGRATIONS)))
            self._migrated = True

    def _oldest_kept(self) -> float:
        return time.time() - self.retention_s if self.retention_s > 0 else float("-inf")

    def save(self, owner: str, body: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        """Store one response (a new one, or replace one by id), and purge expired ones."""
        row = (body["id"], owner, float(body["created_at"]), str(body["status"]),
               json.dumps(body), json.dumps(conversation))  # ASCII: a lone surrogate is stored escaped
        with self._connect() as conn, database.write(conn):
            conn.execute("INSERT OR REPLACE INTO responses (id, owner, created_at, status, body, conversation) "
                         "VALUES (?, ?, ?, ?, ?, ?)", row)
            conn.execute("DELETE FROM responses WHERE created_at < ?", (self._oldest_kept(),))

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response, if it exists, has not expired and belongs to ``owner``."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT body, conversation FROM responses WHERE id = ? AND owner = ? AND created_at >= ?",
                (response_id, owner, self._oldest_kept()),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(response_id, owner, json.loads(row[0]), json.loads(row[1]))

    def delete(self, response_id: str, owner: str) -> bool:
        """Whether a response of ``owner`` was deleted."""
        with self._connect() as conn, database.write(conn):
            cur = conn.execute("DELETE FROM responses WHERE id = ? AND owner = ? AND created_at >= ?",
                               (response_id, owner, self._oldest_kept()))
        return cur.rowcount > 0
