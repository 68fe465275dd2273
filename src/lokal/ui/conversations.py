"""Chat history: conversations and their messages, kept in the UI's SQLite file.

What is stored is bounded (``MAX_*`` below, ``MAX_JSON_DEPTH``/``MAX_JSON_BYTES`` for params and
stats; a ``StoredValueError`` beyond), and what is read back is checked again: a row that an
older lokal (or a hand) wrote badly is shown with empty params or stats, never breaks the list,
and can still be deleted.

Images attached to a user message are stored in the message's row as the data: URLs the chat
request carries (at most ``MAX_IMAGES_PER_MESSAGE``, each PNG, JPEG, GIF or WebP of at most
``MAX_IMAGE_BYTES``); the request body limit (``LOKAL_MAX_BODY_BYTES``) bounds a message's
images together. Audio is never stored: a recording becomes prompt text, a spoken answer is made
again when asked for."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lokal.ui.database import (
    StoredValueError,
    UiDatabase,
    clean_json,
    clean_text,
    load_json_object,
    stored_number,
    stored_text,
)

log = logging.getLogger("lokal.ui")

MAX_TITLE_CHARS = 256
MAX_MODEL_CHARS = 256
MAX_SYSTEM_PROMPT_CHARS = 100_000
MAX_CONTENT_CHARS = 1_000_000  # one message: more than any model's context holds
MAX_QUERY_CHARS = 1_000
MAX_IMAGES_PER_MESSAGE = 8
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # decoded; the UI scales larger pictures down before attaching them
# What the UI sends and vision models read (llama.cpp's image loader has no WebP, the UI converts it first,
# but a WebP stored by another client is still shown).
_IMAGE_URL = re.compile(r"data:(image/(?:png|jpeg|gif|webp));base64,([A-Za-z0-9+/]*={0,2})")
_MAGIC = {"image/png": (b"\x89PNG\r\n\x1a\n",), "image/jpeg": (b"\xff\xd8\xff",),
          "image/gif": (b"GIF87a", b"GIF89a"), "image/webp": (b"RIFF",)}


class ConversationNotFound(KeyError):
    """No conversation has that id."""


@dataclass
class Message:
    id: int
    role: str
    content: str
    model: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    images: list[str] = field(default_factory=list)  # data: URLs


@dataclass
class Conversation:
    id: str
    title: str
    model: str
    system_prompt: str
    params: dict[str, Any]
    created_at: float
    updated_at: float
    messages: list[Message] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConversationStore:
    """Create, list, search, rename, delete and export conversations; append and cut messages."""

    def __init__(self, db: UiDatabase) -> None:
        self.db = db

    def create(self, title: str = "New chat", model: str = "", system_prompt: str = "",
               params: dict[str, Any] | None = None) -> Conversation:
        """A new, empty conversation (``StoredValueError`` when a field is out of bounds)."""
        title = clean_text(title, "title", MAX_TITLE_CHARS).strip() or "New chat"
        model = clean_text(model, "model", MAX_MODEL_CHARS)
        system_prompt = clean_text(system_prompt, "system_prompt", MAX_SYSTEM_PROMPT_CHARS)
        now = time.time()
        conv = Conversation(uuid.uuid4().hex, title, model, system_prompt, clean_json(params or {}, "params"), now, now)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO conversations (id, title, model, system_prompt, params, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conv.id, conv.title, model, system_prompt, json.dumps(conv.params), now, now),
            )
        return conv

    def list(self, query: str = "") -> list[Conversation]:
        """Newest first, without messages; ``query`` matches titles and message text (case-insensitive).
        A row that cannot be read at all is left out (and logged); one with unreadable params is
        listed with empty params."""
        query = clean_text(query, "query", MAX_QUERY_CHARS)
        with self.db.reading() as conn:
            if query:
                like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                rows = conn.execute(
                    "SELECT * FROM conversations c WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS ("
                    " SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\')"
                    " ORDER BY updated_at DESC",
                    (like, like),
                ).fetchall()
            else:
                rows = conn.execute("SELECT * FROM conversations ORDER BY updated_at DESC").fetchall()
        found = []
        for row in rows:
            try:
                found.append(_conversation(row))
            except Exception as exc:  # a row no reading can save: the others are still listed
                log.warning("conversation %r cannot be read (%s); left out of the list", row["id"], exc)
        return found

    def get(self, conversation_id: str) -> Conversation:
        with self.db.reading() as conn:
            row = conn.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                raise ConversationNotFound(conversation_id)
            conv = _conversation(row)
            conv.messages = [
                _message(m) for m in conn.execute(
                    "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position", (conversation_id,))
            ]
        return conv

    def update(self, conversation_id: str, *, title: str | None = None, model: str | None = None,
               system_prompt: str | None = None, params: dict[str, Any] | None = None) -> Conversation:
        """Change the given fields (rename with ``title``); ``StoredValueError`` when one is out of bounds."""
        changes: dict[str, Any] = {}
        if title is not None:
            changes["title"] = clean_text(title, "title", MAX_TITLE_CHARS).strip() or "Untitled"
        if model is not None:
            changes["model"] = clean_text(model, "model", MAX_MODEL_CHARS)
        if system_prompt is not None:
            changes["system_prompt"] = clean_text(system_prompt, "system_prompt", MAX_SYSTEM_PROMPT_CHARS)
        if params is not None:
            changes["params"] = json.dumps(clean_json(params, "params"))
        with self.db.transaction() as conn:
            _require(conn, conversation_id)
            if changes:
                assignments = ", ".join(f"{k} = ?" for k in changes)
                conn.execute(f"UPDATE conversations SET {assignments}, updated_at = ? WHERE id = ?",
                             (*changes.values(), time.time(), conversation_id))
        return self.get(conversation_id)

    def delete(self, conversation_id: str) -> None:
        with self.db.transaction() as conn:
            _require(conn, conversation_id)
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def append(self, conversation_id: str, role: str, content: str, model: str = "",
               stats: dict[str, Any] | None = None, images: Sequence[str] = ()) -> Message:
        """Add a message at the end (position taken inside the transaction: concurrent appends never
        collide); ``StoredValueError`` when a field is out of bounds."""
        role = clean_text(role, "role", MAX_MODEL_CHARS)
        content = clean_text(content, "content", MAX_CONTENT_CHARS)
        model = clean_text(model, "model", MAX_MODEL_CHARS)
        stats = clean_json(stats or {}, "stats")
        stored_images = clean_images(images)
        now = time.time()
        with self.db.transaction() as conn:
            _require(conn, conversation_id)
            position = conn.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, position, role, content, model, stats, created_at, images)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, position, role, content, model, json.dumps(stats), now, json.dumps(stored_images)),
            )
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
            return Message(int(cur.lastrowid or 0), role, content, model, stats, now, stored_images)

    def truncate(self, conversation_id: str, keep: int) -> Conversation:
        """Keep the first ``keep`` messages (regenerate and edit-and-resend cut the tail this way)."""
        with self.db.transaction() as conn:
            _require(conn, conversation_id)
            conn.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                         (conversation_id, max(0, keep)))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id))
        return self.get(conversation_id)

    def export_markdown(self, conversation_id: str) -> str:
        conv = self.get(conversation_id)
        lines = [f"# {conv.title}", ""]
        if conv.model:
            lines += [f"Model: `{conv.model}`", ""]
        if conv.system_prompt:
            lines += ["## System", "", conv.system_prompt, ""]
        for m in conv.messages:
            lines += [f"## {m.role.capitalize()}" + (f" ({m.model})" if m.model and m.role == "assistant" else ""),
                      ""]
            lines += [f"*[image {i}: {image_summary(url)}]*" for i, url in enumerate(m.images, 1)]
            lines += [m.content, ""]
        return "\n".join(lines)

    def export_json(self, conversation_id: str) -> dict[str, Any]:
        return self.get(conversation_id).to_dict()


def clean_images(images: object) -> list[str]:
    """A message's images as they are stored: data: URLs of PNG, JPEG, GIF or WebP whose bytes are
    what they say, within the bounds; else ``StoredValueError`` naming the image."""
    if not isinstance(images, list | tuple):
        raise StoredValueError("images must be a list of data: URLs")
    if len(images) > MAX_IMAGES_PER_MESSAGE:
        raise StoredValueError(f"a message holds at most {MAX_IMAGES_PER_MESSAGE} images, not {len(images)}")
    for i, url in enumerate(images, 1):
        match = _IMAGE_URL.fullmatch(url) if isinstance(url, str) else None
        if match is None:
            raise StoredValueError(f"image {i} is not a base64 data: URL of a PNG, JPEG, GIF or WebP image")
        media_type, data = match.groups()
        if len(data) % 4:
            raise StoredValueError(f"image {i} is not valid base64")
        if len(data) * 3 // 4 - (len(data) - len(data.rstrip("="))) > MAX_IMAGE_BYTES:
            raise StoredValueError(f"image {i} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        try:
            head = base64.b64decode(data[:16], validate=True)
        except binascii.Error:
            raise StoredValueError(f"image {i} is not valid base64") from None
        if not head.startswith(_MAGIC[media_type]):
            raise StoredValueError(f"image {i} is not a {media_type.removeprefix('image/').upper()} image")
    return list(images)


def image_summary(url: str) -> str:
    """``image/png, 12.3 KB``: what an export writes in place of an image's bytes."""
    media_type, _, data = url.removeprefix("data:").partition(";base64,")
    return f"{media_type}, {len(data) * 3 / 4 / 1000:.1f} KB"


def _images(stored: object, message_id: int) -> list[str]:
    """A message's stored images read back; ``[]`` (and a warning) when the column is unreadable."""
    try:
        return clean_images(json.loads(stored) if isinstance(stored, str | bytes) else stored)
    except (ValueError, RecursionError) as exc:
        log.warning("images of message %s cannot be read (%s); shown without them", message_id, exc)
        return []


def _require(conn: sqlite3.Connection, conversation_id: str) -> None:
    if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
        raise ConversationNotFound(conversation_id)


def _conversation(row: sqlite3.Row) -> Conversation:
    """A row as a Conversation, whatever is stored in it (only a missing id makes it unreadable)."""
    if not isinstance(row["id"], str):
        raise ValueError(f"its id is {type(row['id']).__name__}, not text")
    return Conversation(row["id"], stored_text(row["title"]), stored_text(row["model"]),
                        stored_text(row["system_prompt"]),
                        load_json_object(row["params"], f"params of conversation {row['id']}"),
                        stored_number(row["created_at"]), stored_number(row["updated_at"]))


def _message(row: sqlite3.Row) -> Message:
    message_id = row["id"] if isinstance(row["id"], int) else 0
    return Message(message_id, stored_text(row["role"]), stored_text(row["content"]), stored_text(row["model"]),
                   load_json_object(row["stats"], f"stats of message {message_id}"), stored_number(row["created_at"]),
                   _images(row["images"], message_id))
