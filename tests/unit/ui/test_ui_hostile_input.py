"""The UI's API against hostile or damaged input: bounded writes (400 with the field and the bound),
lone surrogates stored as U+FFFD, and rows that an older lokal (or a hand) wrote badly, which must
neither break the conversation or preset lists nor resist being deleted."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lokal.app import create_app
from lokal.config import Settings
from lokal.ui.conversations import (
    MAX_CONTENT_CHARS,
    MAX_IMAGE_BYTES,
    MAX_IMAGES_PER_MESSAGE,
    MAX_SYSTEM_PROMPT_CHARS,
    MAX_TITLE_CHARS,
    ConversationStore,
)
from lokal.ui.database import MAX_JSON_BYTES, MAX_JSON_DEPTH, StoredValueError, UiDatabase

JSON = {"content-type": "application/json"}


def nested(depth: int) -> dict[str, Any]:
    """A JSON object ``depth`` levels deep (the object itself is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_text(depth: int) -> str:
    """The same as JSON text, built without recursion (json.dumps of 900 levels may overflow)."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)


def error_message(response: Any) -> str:
    return str(response.json()["error"]["message"])


def new_conversation(client: TestClient, **fields: Any) -> str:
    response = client.post("/ui/api/conversations", json={"title": "t", **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- bounded writes ---

def test_params_nested_900_deep_are_refused_and_the_list_keeps_answering(client: TestClient) -> None:
    body = '{"title": "deep", "params": ' + nested_text(900) + "}"
    response = client.post("/ui/api/conversations", content=body, headers=JSON)
    assert response.status_code == 400
    assert error_message(response) == f"params is nested deeper than {MAX_JSON_DEPTH} levels"
    listed = client.get("/ui/api/conversations")
    assert listed.status_code == 200 and listed.json() == []


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("POST", "", {"params": nested(MAX_JSON_DEPTH + 1)}, "params is nested deeper than 8 levels"),
    ("POST", "", {"params": {"stop": [[[[[[[["x"]]]]]]]]}}, "params is nested deeper than 8 levels"),
    ("POST", "", {"params": {"k": "x" * MAX_JSON_BYTES}}, f"params is larger than {MAX_JSON_BYTES} bytes as JSON"),
    ("POST", "", {"title": "x" * (MAX_TITLE_CHARS + 1)}, f"title is longer than {MAX_TITLE_CHARS} characters"),
    ("POST", "", {"model": "m" * 257}, "model is longer than 256 characters"),
    ("POST", "", {"system_prompt": "s" * (MAX_SYSTEM_PROMPT_CHARS + 1)},
     f"system_prompt is longer than {MAX_SYSTEM_PROMPT_CHARS} characters"),
    ("PATCH", "/{id}", {"params": nested(50)}, "params is nested deeper than 8 levels"),
    ("PATCH", "/{id}", {"title": "x" * (MAX_TITLE_CHARS + 1)}, f"title is longer than {MAX_TITLE_CHARS} characters"),
    ("POST", "/{id}/messages", '{"role": "assistant", "content": "a", "stats": ' + nested_text(900) + "}",
     "stats is nested deeper than 8 levels"),
    ("POST", "/{id}/messages", {"role": "user", "content": "c" * (MAX_CONTENT_CHARS + 1)},
     f"content is longer than {MAX_CONTENT_CHARS} characters"),
])
def test_out_of_bounds_fields_get_400_naming_the_field_and_the_bound(
    client: TestClient, method: str, path: str, body: dict[str, Any] | str, message: str
) -> None:
    conversation_id = new_conversation(client)
    text = body if isinstance(body, str) else json.dumps(body)
    response = client.request(method, "/ui/api/conversations" + path.format(id=conversation_id), content=text,
                              headers=JSON)
    assert response.status_code == 400, response.text
    assert error_message(response) == message
    assert client.get("/ui/api/conversations").status_code == 200
    got = client.get(f"/ui/api/conversations/{conversation_id}").json()
    assert (got["title"], got["params"], got["messages"]) == ("t", {}, [])  # nothing was changed


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_numbers_that_json_cannot_carry_are_refused(client: TestClient, number: str) -> None:
    response = client.post("/ui/api/conversations", content='{"params": {"temperature": N}}'.replace("N", number),
                           headers=JSON)
    assert response.status_code == 400
    assert error_message(response) == "params has a number that is not finite (NaN or Infinity)"


def test_values_at_the_bounds_are_kept(client: TestClient) -> None:
    params = {"deep": nested(MAX_JSON_DEPTH - 1), "stop": ["a", "b"], "temperature": 0.7, "seed": None}
    conversation_id = new_conversation(client, title="x" * MAX_TITLE_CHARS, params=params)
    response = client.post(f"/ui/api/conversations/{conversation_id}/messages",
                           json={"role": "assistant", "content": "hi", "stats": {"tokens": 3, "ttft_s": 0.1}})
    assert response.status_code == 201
    got = client.get(f"/ui/api/conversations/{conversation_id}").json()
    assert got["params"] == params and got["messages"][0]["stats"] == {"tokens": 3, "ttft_s": 0.1}


def test_the_store_refuses_what_the_api_refuses(tmp_path: Path) -> None:
    store = ConversationStore(UiDatabase(tmp_path / "ui.sqlite3"))
    with pytest.raises(StoredValueError, match="nested deeper"):
        store.create("deep", params=nested(20))
    conv = store.create("ok")
    with pytest.raises(StoredValueError, match="stats"):
        store.append(conv.id, "assistant", "a", stats={"x": float("nan")})
    assert store.list()[0].id == conv.id and store.get(conv.id).messages == []


# --- lone surrogates ---

LONE = '"a\\ud800b"'  # valid JSON, not valid UTF-8


def lone(template: str) -> str:
    """JSON text with LONE at each @."""
    return template.replace("@", LONE)


def test_a_lone_surrogate_is_stored_as_the_replacement_character(client: TestClient) -> None:
    body = lone('{"title": @, "system_prompt": @, "model": @, "params": {@: @, "stop": [@]}}')
    response = client.post("/ui/api/conversations", content=body, headers=JSON)
    assert response.status_code == 201, response.text
    conversation_id = response.json()["id"]
    message = client.post(f"/ui/api/conversations/{conversation_id}/messages",
                          content=lone('{"role": "user", "content": @, "stats": {"note": @}}'),
                          headers=JSON)
    assert message.status_code == 201, message.text
    renamed = client.patch(f"/ui/api/conversations/{conversation_id}", content='{"title": "\\udfff"}',
                           headers=JSON)
    assert renamed.status_code == 200 and renamed.json()["title"] == "\ufffd"
    got = client.get(f"/ui/api/conversations/{conversation_id}").json()
    assert got["system_prompt"] == got["model"] == "a\ufffdb"
    assert got["params"] == {"a\ufffdb": "a\ufffdb", "stop": ["a\ufffdb"]}
    assert got["messages"][0]["content"] == "a\ufffdb" and got["messages"][0]["stats"] == {"note": "a\ufffdb"}
    assert client.get("/ui/api/conversations").status_code == 200
    assert client.get("/ui/api/conversations", params={"q": "a\ufffdb"}).json()[0]["id"] == conversation_id
    for fmt in ("md", "json"):
        assert client.get(f"/ui/api/conversations/{conversation_id}/export", params={"format": fmt}).status_code == 200


def test_a_title_cut_inside_an_emoji_by_the_ui_is_still_saved(client: TestClient) -> None:
    # chat.js cuts the first message to 48 UTF-16 units: an emoji there leaves half a surrogate pair
    title_js = "x" * 47 + "\\ud83d"
    response = client.post("/ui/api/conversations", content='{"title": "' + title_js + '"}', headers=JSON)
    assert response.status_code == 201 and response.json()["title"] == "x" * 47 + "\ufffd"


def test_arena_labels_and_preset_names_are_bounded_and_a_lone_surrogate_is_no_500(client: TestClient) -> None:
    vote = client.post("/ui/api/arena/votes", content=lone('{"left": @, "right": "b", "winner": "left"}'),
                       headers=JSON)
    assert vote.status_code == 204
    assert client.get("/ui/api/arena/tally").json()[0]["label"] == "a\ufffdb"
    long_vote = client.post("/ui/api/arena/votes", json={"left": "l" * 257, "right": "b", "winner": "tie"})
    assert long_vote.status_code == 400
    assert error_message(long_vote) == "a contestant's label is longer than 256 characters"
    long_name = client.put("/ui/api/presets/" + "n" * 101, json={"params": {"temperature": 0.5}})
    assert long_name.status_code == 400 and error_message(long_name) == "a preset's name is longer than 100 characters"


# --- rows written badly before these bounds existed ---

def plant(home: Path, conversations: Sequence[tuple[Any, ...]], messages: Sequence[tuple[Any, ...]] = (),
          presets: Sequence[tuple[Any, ...]] = ()) -> None:
    """Rows written straight into the SQLite file, as an older lokal (or a hand) may have left them."""
    with sqlite3.connect(home / "ui.sqlite3") as raw:
        raw.executemany("INSERT INTO conversations (id, title, model, system_prompt, params, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)", conversations)
        raw.executemany("INSERT INTO messages (conversation_id, position, role, content, model, stats, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)", messages)
        raw.executemany("INSERT INTO presets (name, params, created_at) VALUES (?, ?, ?)", presets)


def test_bad_rows_from_an_older_version_neither_break_the_list_nor_resist_deletion(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)
    good = new_conversation(client, params={"temperature": 0.5})
    now = time.time()
    bad = {
        "deep": nested_text(900),  # what the POST stored: every list answered 500 after it
        "deeper": nested_text(5000),  # too deep even to decode
        "garbage": "{not json",
        "array": "[1, 2]",
        "nan": '{"t": NaN}',
        "huge": json.dumps({"k": "x" * (MAX_JSON_BYTES + 10)}),
    }
    plant(tmp_path, [(cid, f"bad {cid}", "", "", params, now - 10, now - 10) for cid, params in bad.items()]
          + [("bytes", b"\xff\xfe not utf-8", b"\x80", "", b"\xff", "yesterday", "soon")],
          messages=[("deep", 0, "assistant", "hi", "", nested_text(900), now),
                    ("bytes", 0, "user", b"\xc3\x28", "", "{}", now)],
          presets=[("bad preset", nested_text(900), now)])
    with sqlite3.connect(tmp_path / "ui.sqlite3") as raw:  # TEXT (not BLOB) that is not UTF-8
        raw.execute("UPDATE conversations SET system_prompt = CAST(X'FF41' AS TEXT) WHERE id = 'bytes'")

    for restart in range(2):  # the same file, read by a fresh server process's app too
        if restart:
            client = TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)
        listed = client.get("/ui/api/conversations")
        assert listed.status_code == 200, listed.text
        by_id = {c["id"]: c for c in listed.json()}
        assert set(by_id) == {good, *bad, "bytes"}
        assert by_id[good]["params"] == {"temperature": 0.5}
        assert all(by_id[cid]["params"] == {} for cid in bad)
        assert by_id["bytes"]["title"] == "\ufffd\ufffd not utf-8" and by_id["bytes"]["created_at"] == 0.0
        assert by_id["bytes"]["system_prompt"] == "\ufffdA"
        assert client.get("/ui/api/conversations", params={"q": "bad"}).status_code == 200
        deep = client.get("/ui/api/conversations/deep")
        assert deep.status_code == 200 and deep.json()["messages"][0]["stats"] == {}
        assert client.get("/ui/api/conversations/bytes").json()["messages"][0]["content"] == "\ufffd("
        assert client.get("/ui/api/conversations/deep/export", params={"format": "json"}).status_code == 200
        presets = client.get("/ui/api/presets")
        assert presets.status_code == 200 and presets.json()[-1]["params"] == {}

    for cid in [*bad, "bytes"]:
        assert client.delete(f"/ui/api/conversations/{cid}").status_code == 204
    assert client.delete("/ui/api/presets/bad preset").status_code == 204
    assert [c["id"] for c in client.get("/ui/api/conversations").json()] == [good]
    assert [p["builtin"] for p in client.get("/ui/api/presets").json()] == [True, True, True]


def test_a_row_without_an_id_is_left_out_of_the_list(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)
    good = new_conversation(client)
    plant(tmp_path, [(None, "no id", "", "", "{}", 0.0, 0.0)])  # TEXT PRIMARY KEY takes NULL in SQLite
    listed = client.get("/ui/api/conversations")
    assert listed.status_code == 200 and [c["id"] for c in listed.json()] == [good]


# --- images on a message ---

def png_data_url(size: tuple[int, int] = (8, 8)) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize(("images", "message"), [
    (["https://example.com/cat.png"], "image 1 is not a base64 data: URL"),
    (["data:image/svg+xml;base64,PHN2Zz48L3N2Zz4="], "image 1 is not a base64 data: URL"),
    (["data:image/png;base64,R0lGODlhAQABAAAAACw="], "image 1 is not a PNG image"),  # a GIF's bytes
    (["data:image/png;base64,iVBORw0KGgo"], "image 1 is not valid base64"),
    ([42], "images.0: Input should be a valid string"),
    ("data:image/png;base64,iVBORw0KGgo=", "images: Input should be a valid list"),
])
def test_images_that_are_not_stored_pictures_get_400_naming_the_image(
    client: TestClient, images: object, message: str
) -> None:
    cid = new_conversation(client)
    r = client.post(f"/ui/api/conversations/{cid}/messages", json={"role": "user", "content": "x", "images": images})
    assert r.status_code == 400 and message in error_message(r), r.text
    assert client.get(f"/ui/api/conversations/{cid}").json()["messages"] == []


def test_too_many_or_too_large_images_are_refused_and_images_at_the_bounds_kept(tmp_path: Path) -> None:
    store = ConversationStore(UiDatabase(tmp_path / "ui.sqlite3"))
    conv = store.create("pictures")
    small = png_data_url()
    with pytest.raises(StoredValueError, match=f"at most {MAX_IMAGES_PER_MESSAGE} images"):
        store.append(conv.id, "user", "", images=[small] * (MAX_IMAGES_PER_MESSAGE + 1))
    head = base64.b64decode(small.split(",")[1])
    padded = "data:image/png;base64," + base64.b64encode(head + bytes(MAX_IMAGE_BYTES + 1 - len(head))).decode()
    with pytest.raises(StoredValueError, match="image 2 is larger than 5 MiB"):
        store.append(conv.id, "user", "", images=[small, padded])
    kept = store.append(conv.id, "user", "", images=[small] * MAX_IMAGES_PER_MESSAGE)
    assert store.get(conv.id).messages == [kept] and kept.images == [small] * MAX_IMAGES_PER_MESSAGE


def test_a_damaged_images_column_shows_the_message_without_its_images(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)
    cid = new_conversation(client)
    assert client.post(f"/ui/api/conversations/{cid}/messages",
                       json={"role": "user", "content": "look", "images": [png_data_url()]}).status_code == 201
    with sqlite3.connect(tmp_path / "ui.sqlite3") as raw:
        raw.execute("UPDATE messages SET images = '[\"data:image/png;base64,!!\"' WHERE conversation_id = ?", (cid,))
    got = client.get(f"/ui/api/conversations/{cid}")
    assert got.status_code == 200 and got.json()["messages"][0]["content"] == "look"
    assert got.json()["messages"][0]["images"] == []
    assert client.delete(f"/ui/api/conversations/{cid}").status_code == 204
