"""lokal's SQLite file (``Settings.database_path``, ``$LOKAL_HOME/ui.sqlite3``), which the web UI's
chats and the Responses API's stored responses share, each in tables of its own. How it is opened,
written and migrated is decided here, once, for both."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30  # a writer waits this long for another (thread or process) to finish


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (writes open their own transaction with ``write``),
    waiting for other writers rather than failing; the file and its folder are made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        yield conn
    finally:
        conn.close()


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back on any
    error, so concurrent writers wait for each other and nothing is stored half-written."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, migrations: Sequence[str], version: int, what: str) -> None:
    """Run the migration scripts after ``version`` (inside the caller's transaction). A file
    written by a newer lokal (``version`` beyond the scripts) is refused, never downgraded."""
    if version > len(migrations):
        raise RuntimeError(f"{what} has schema {version}; this lokal knows {len(migrations)}")
    for script in migrations[version:]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
