"""The web UI's SQLite file (``$LOKAL_HOME/ui.sqlite3``): its schema, versioned, transactions,
and what may be stored in it (``clean_text``, ``clean_json``) and read back (``load_json_object``)."""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lokal import database

log = logging.getLogger("lokal.ui")

# A JSON object stored in a TEXT column (a conversation's params, a message's stats, a preset):
# at most this deep (the object itself is level 1) and this long as UTF-8 JSON. The UI writes
# flat objects of a few hundred bytes; the bounds keep every stored value serialisable.
MAX_JSON_DEPTH = 8
MAX_JSON_BYTES = 16 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")

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
    # 2: images attached to a message, a JSON list of data: URLs (bounds in lokal.ui.conversations)
    "ALTER TABLE messages ADD COLUMN images TEXT NOT NULL DEFAULT '[]'",
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoredValueError(ValueError):
    """A value the UI database does not store: too long, nested too deep, or not JSON."""


def clean_text(value: str, what: str, max_chars: int) -> str:
    """``value`` as it is stored: at most ``max_chars`` characters (else ``StoredValueError``), lone
    surrogates replaced by U+FFFD.

    A lone surrogate ("\\ud800" is valid JSON) is not a character: UTF-8, which SQLite and every
    response need, cannot encode it. It is replaced, as any UTF-8 decoder replaces an invalid
    sequence, rather than refused: the UI itself cuts titles by UTF-16 units, which can split
    an emoji's surrogate pair, and that must not make sending the first message fail."""
    if len(value) > max_chars:
        raise StoredValueError(f"{what} is longer than {max_chars} characters")
    return _SURROGATE.sub("\ufffd", value)


def clean_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    """A JSON object as it is stored: at most ``MAX_JSON_DEPTH`` levels deep and ``MAX_JSON_BYTES``
    long, numbers finite, lone surrogates in keys and strings replaced by U+FFFD; else
    ``StoredValueError`` naming ``what``."""
    if not isinstance(value, dict):
        raise StoredValueError(f"{what} must be a JSON object")

    def clean(v: Any, depth: int) -> Any:
        if isinstance(v, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise StoredValueError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            if not isinstance(v, dict):
                return [clean(x, depth + 1) for x in v]
            if not all(isinstance(k, str) for k in v):
                raise StoredValueError(f"{what} has a key that is not a string")
            return {_SURROGATE.sub("\ufffd", k): clean(x, depth + 1) for k, x in v.items()}
        if isinstance(v, str):
            return _SURROGATE.sub("\ufffd", v)
        if isinstance(v, float) and not math.isfinite(v):
            raise StoredValueError(f"{what} has a number that is not finite (NaN or Infinity)")
        if v is None or isinstance(v, bool | int | float):
            return v
        raise StoredValueError(f"{what} holds a {type(v).__name__}, which is not JSON")

    cleaned: dict[str, Any] = clean(value, 1)
    size = len(json.dumps(cleaned, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    if size > MAX_JSON_BYTES:
        raise StoredValueError(f"{what} is larger than {MAX_JSON_BYTES} bytes as JSON")
    return cleaned


def load_json_object(stored: object, what: str) -> dict[str, Any]:
    """A stored JSON object read back; ``{}`` (and a warning) when it cannot be: malformed, too
    deep to decode or to serialise, not an object (rows written by an older lokal, or by hand)."""
    try:
        if not isinstance(stored, str | bytes):
            raise StoredValueError(f"stored as {type(stored).__name__}")
        return clean_json(json.loads(stored), what)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and StoredValueError are ValueErrors
        log.warning("%s cannot be read (%s); shown empty", what, exc)
        return {}


def stored_text(value: object) -> str:
    """A TEXT column read back as a str, whatever an older lokal (or a hand) left there."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def stored_number(value: object) -> float:
    """A REAL column read back as a finite float (0.0 when it is not one)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _decode_text(raw: bytes) -> str:
    """TEXT columns as str, invalid UTF-8 replaced: a bad byte in one row must not fail a whole query."""
    return raw.decode("utf-8", "replace")


class UiDatabase:
    """One SQLite file; every write runs in its own ``BEGIN IMMEDIATE`` transaction, so
    concurrent writers (threads or processes) wait for each other instead of interleaving."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._migrate_lock = threading.Lock()
        self._migrated = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with database.connect(self.path) as conn:
            conn.row_factory = sqlite3.Row
            conn.text_factory = _decode_text
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn

    def _migrate(self) -> None:
        with self._migrate_lock:
            if self._migrated:
                return
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode = WAL")
                with database.write(conn):
                    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    database.migrate(conn, MIGRATIONS, version, str(self.path))
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._migrated = True

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction: committed on success, rolled back on error."""
        self._migrate()
        with self._connect() as conn, database.write(conn):
            yield conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (one consistent snapshot per statement)."""
        self._migrate()
        with self._connect() as conn:
            yield conn
