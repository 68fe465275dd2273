"""The web UI's conversation store: SQLite under $LOKAL_HOME, versioned schema, transactions."""

from __future__ import annotations

import base64
import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from lokal.ui.arena import ArenaTally
from lokal.ui.conversations import ConversationNotFound, ConversationStore
from lokal.ui.database import SCHEMA_VERSION, UiDatabase
from lokal.ui.presets import BUILTIN_PRESETS, PresetError, PresetStore


@pytest.fixture
def db(tmp_path: Path) -> UiDatabase:
    return UiDatabase(tmp_path / "ui.sqlite3")


def test_create_append_and_get_keep_order_and_fields(db: UiDatabase) -> None:
    store = ConversationStore(db)
    conv = store.create("Trip", model="smollm2:135m", system_prompt="Be brief.", params={"temperature": 0.2})
    store.append(conv.id, "user", "Where to?")
    store.append(conv.id, "assistant", "Lisbon.", model="smollm2:135m", stats={"tokens": 3, "ttft_s": 0.1})
    got = store.get(conv.id)
    assert (got.title, got.model, got.system_prompt, got.params) == ("Trip", "smollm2:135m", "Be brief.",
                                                                     {"temperature": 0.2})
    assert [(m.role, m.content) for m in got.messages] == [("user", "Where to?"), ("assistant", "Lisbon.")]
    assert got.messages[1].stats == {"tokens": 3, "ttft_s": 0.1}


def test_history_survives_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    conv = ConversationStore(UiDatabase(tmp_path / "ui.sqlite3")).create("Kept")
    ConversationStore(UiDatabase(tmp_path / "ui.sqlite3")).append(conv.id, "user", "still here?")
    again = ConversationStore(UiDatabase(tmp_path / "ui.sqlite3")).get(conv.id)
    assert [m.content for m in again.messages] == ["still here?"]


def test_list_is_newest_first_and_search_matches_titles_and_message_text(db: UiDatabase) -> None:
    store = ConversationStore(db)
    a = store.create("Apples")
    b = store.create("Pears")
    store.append(a.id, "user", "Which is the 100% sweetest Fuji?")
    assert [c.id for c in store.list()] == [a.id, b.id]  # a was written to last
    assert [c.title for c in store.list("pear")] == ["Pears"]
    assert [c.title for c in store.list("FUJI")] == ["Apples"]
    assert [c.title for c in store.list("100%")] == ["Apples"]  # LIKE wildcards are taken literally
    assert store.list("0_%") == [] and store.list("nothing like this") == []


def test_rename_and_update_and_delete(db: UiDatabase) -> None:
    store = ConversationStore(db)
    conv = store.create("Old")
    store.append(conv.id, "user", "hi")
    assert store.update(conv.id, title="  New name ").title == "New name"
    assert store.update(conv.id, system_prompt="S", params={"top_k": 5}).params == {"top_k": 5}
    store.delete(conv.id)
    with pytest.raises(ConversationNotFound):
        store.get(conv.id)
    with pytest.raises(ConversationNotFound):
        store.append(conv.id, "user", "orphan")
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # messages went with it


def test_truncate_keeps_the_first_messages_and_positions_continue(db: UiDatabase) -> None:
    store = ConversationStore(db)
    conv = store.create("Edit")
    for i in range(4):
        store.append(conv.id, "user" if i % 2 == 0 else "assistant", f"m{i}")
    assert [m.content for m in store.truncate(conv.id, 1).messages] == ["m0"]
    store.append(conv.id, "assistant", "again")
    assert [m.content for m in store.get(conv.id).messages] == ["m0", "again"]


def test_export_markdown_and_json(db: UiDatabase) -> None:
    store = ConversationStore(db)
    conv = store.create("Export me", model="smollm2:135m", system_prompt="Be kind.")
    store.append(conv.id, "user", "Hello")
    store.append(conv.id, "assistant", "Hi **there**", model="smollm2:135m")
    md = store.export_markdown(conv.id)
    assert md.startswith("# Export me\n")
    assert "## System\n\nBe kind." in md and "## User\n\nHello" in md
    assert "## Assistant (smollm2:135m)\n\nHi **there**" in md
    data = json.loads(json.dumps(store.export_json(conv.id)))
    assert data["title"] == "Export me" and [m["content"] for m in data["messages"]] == ["Hello", "Hi **there**"]


def test_concurrent_appends_from_threads_never_collide_or_get_lost(db: UiDatabase) -> None:
    conv = ConversationStore(db).create("Busy")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        store = ConversationStore(UiDatabase(db.path))  # its own connections, as separate requests have
        try:
            for i in range(20):
                store.append(conv.id, "user", f"{n}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    messages = ConversationStore(db).get(conv.id).messages
    assert len(messages) == 160
    assert sorted(m.content for m in messages) == sorted(f"{n}-{i}" for n in range(8) for i in range(20))
    for n in range(8):  # each writer's messages stay in its own order
        mine = [m.content for m in messages if m.content.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(20)]


def _append_many(path: str, conversation_id: str, tag: str) -> None:
    store = ConversationStore(UiDatabase(Path(path)))
    for i in range(25):
        store.append(conversation_id, "user", f"{tag}-{i}")


def test_concurrent_appends_from_processes_keep_the_file_consistent(db: UiDatabase) -> None:
    conv = ConversationStore(db).create("Two servers")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(db.path), conv.id, tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(ConversationStore(db).get(conv.id).messages) == 50
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_failed_write_rolls_back(db: UiDatabase) -> None:
    store = ConversationStore(db)
    conv = store.create("Atomic")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("UPDATE conversations SET title = 'half' WHERE id = ?", (conv.id,))
        raise RuntimeError("crash in the middle")
    assert store.get(conv.id).title == "Atomic"


def test_schema_is_versioned_and_a_newer_file_is_refused(db: UiDatabase, tmp_path: Path) -> None:
    ConversationStore(db).create("v")
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="schema"):
        ConversationStore(UiDatabase(newer)).list()


def test_presets_builtin_and_saved(db: UiDatabase) -> None:
    presets = PresetStore(db)
    assert [p["name"] for p in presets.all()] == list(BUILTIN_PRESETS)
    presets.save("mine", {"temperature": 0.3, "max_tokens": 64})
    presets.save("mine", {"temperature": 0.4})
    assert presets.all()[-1] == {"name": "mine", "params": {"temperature": 0.4}, "builtin": False}
    with pytest.raises(PresetError):
        presets.save("precise", {"temperature": 1.0})
    with pytest.raises(PresetError, match="unknown"):
        presets.save("bad", {"temprature": 1.0})
    assert presets.delete("mine") and not presets.delete("mine")


def test_arena_tally_counts_wins_losses_and_ties(db: UiDatabase) -> None:
    tally = ArenaTally(db)
    tally.vote("a", "b", "left")
    tally.vote("b", "a", "left")
    tally.vote("a", "c", "left")
    tally.vote("a", "b", "tie")
    rows = {r["label"]: (r["wins"], r["losses"], r["ties"]) for r in tally.standings()}
    assert rows == {"a": (2, 1, 1), "b": (1, 1, 1), "c": (0, 1, 0)}
    with pytest.raises(ValueError):
        tally.vote("a", "b", "both")


def test_images_are_kept_with_their_message_and_exports_name_them(db: UiDatabase) -> None:
    store = ConversationStore(db)
    conv = store.create("Picture")
    image = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 1996).decode()
    store.append(conv.id, "user", "What is this?", images=[image])
    store.append(conv.id, "assistant", "A picture.")
    got = store.get(conv.id)
    assert [m.images for m in got.messages] == [[image], []]
    assert store.export_json(conv.id)["messages"][0]["images"] == [image]
    assert "## User\n\n*[image 1: image/jpeg, 2.0 KB]*\nWhat is this?" in store.export_markdown(conv.id)


def test_a_file_of_schema_1_is_upgraded_and_its_messages_have_no_images(tmp_path: Path) -> None:
    from lokal.ui.database import MIGRATIONS

    path = tmp_path / "ui.sqlite3"
    with sqlite3.connect(path) as raw:  # what lokal wrote before images
        raw.executescript(MIGRATIONS[0])
        raw.execute("INSERT INTO conversations VALUES ('old', 'Old', '', '', '{}', 1.0, 1.0)")
        raw.execute("INSERT INTO messages (conversation_id, position, role, content, model, stats, created_at)"
                    " VALUES ('old', 0, 'user', 'before images', '', '{}', 1.0)")
        raw.execute("PRAGMA user_version = 1")
    store = ConversationStore(UiDatabase(path))
    assert [(m.content, m.images) for m in store.get("old").messages] == [("before images", [])]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
