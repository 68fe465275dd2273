"""The UI's page, its static files, and ``/ui/api``: what the page needs that has no public API
(conversations, presets, the arena tally, the monitor snapshot, model facts with a fit badge,
a voice's speakers)."""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path
from typing import Any, Literal

import psutil
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from lokal.config import Settings
from lokal.runtime.runtime import Runtime
from lokal.ui import monitor
from lokal.ui.arena import ArenaTally
from lokal.ui.conversations import ConversationNotFound, ConversationStore
from lokal.ui.database import StoredValueError, UiDatabase, clean_text
from lokal.ui.fit import fit_badge
from lokal.ui.presets import PresetError, PresetStore
from lokal.ui.request_log import RequestLog

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["ui"], include_in_schema=False)


def wants_html(request: Request) -> bool:
    """Browsers ask for text/html; Ollama clients probing ``/`` do not."""
    return "text/html" in request.headers.get("accept", "")


def page() -> HTMLResponse:
    """The single page of the UI, with a CSP that allows only lokal's own files."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=SECURITY_HEADERS)


@router.get("/ui", response_class=HTMLResponse)
async def ui_page() -> HTMLResponse:
    return page()


@router.get("/ui/static/{path:path}")
async def static_file(path: str) -> FileResponse:
    root = STATIC.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, "not found")
    return FileResponse(target, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


# --- storage handles (one SQLite file per $LOKAL_HOME) ---

@cache
def _database(path: Path) -> UiDatabase:
    return UiDatabase(path)


def _db(request: Request) -> UiDatabase:
    settings: Settings = request.app.state.settings
    return _database(settings.database_path)  # the file stored Responses API responses share


def request_log(request: Request) -> RequestLog:
    log = getattr(request.app.state, "request_log", None)
    if log is None:
        log = request.app.state.request_log = RequestLog()
    return log


def _not_found(conversation_id: str) -> HTTPException:
    return HTTPException(404, f"conversation {conversation_id} not found")


def _refused(exc: StoredValueError) -> HTTPException:
    """400 for a value the UI database does not store (the message names the field and the bound)."""
    return HTTPException(400, str(exc))


# --- conversations ---

class NewConversation(BaseModel):
    title: str = "New chat"
    model: str = ""
    system_prompt: str = ""
    params: dict[str, Any] = {}


class ConversationChange(BaseModel):
    title: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    params: dict[str, Any] | None = None


class NewMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str
    model: str = ""
    stats: dict[str, Any] = {}
    images: list[str] = []  # data: URLs (bounds in lokal.ui.conversations)


class Truncate(BaseModel):
    keep: int = Field(ge=0)


@router.get("/ui/api/conversations")
def list_conversations(request: Request, q: str = "") -> list[dict[str, Any]]:
    try:
        return [c.to_dict() for c in ConversationStore(_db(request)).list(q)]
    except StoredValueError as exc:
        raise _refused(exc) from None


@router.post("/ui/api/conversations", status_code=201)
def create_conversation(request: Request, body: NewConversation) -> dict[str, Any]:
    try:
        conv = ConversationStore(_db(request)).create(body.title, body.model, body.system_prompt, body.params)
    except StoredValueError as exc:
        raise _refused(exc) from None
    return conv.to_dict()


@router.get("/ui/api/conversations/{conversation_id}")
def get_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
    try:
        return ConversationStore(_db(request)).get(conversation_id).to_dict()
    except ConversationNotFound:
        raise _not_found(conversation_id) from None


@router.patch("/ui/api/conversations/{conversation_id}")
def change_conversation(request: Request, conversation_id: str, body: ConversationChange) -> dict[str, Any]:
    try:
        return ConversationStore(_db(request)).update(conversation_id, **body.model_dump()).to_dict()
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    except StoredValueError as exc:
        raise _refused(exc) from None


@router.delete("/ui/api/conversations/{conversation_id}", status_code=204)
def delete_conversation(request: Request, conversation_id: str) -> Response:
    try:
        ConversationStore(_db(request)).delete(conversation_id)
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    return Response(status_code=204)


@router.post("/ui/api/conversations/{conversation_id}/messages", status_code=201)
def add_message(request: Request, conversation_id: str, body: NewMessage) -> dict[str, Any]:
    try:
        message = ConversationStore(_db(request)).append(conversation_id, body.role, body.content, body.model,
                                                         body.stats, body.images)
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    except StoredValueError as exc:
        raise _refused(exc) from None
    return message.__dict__


@router.post("/ui/api/conversations/{conversation_id}/truncate")
def truncate_conversation(request: Request, conversation_id: str, body: Truncate) -> dict[str, Any]:
    try:
        return ConversationStore(_db(request)).truncate(conversation_id, body.keep).to_dict()
    except ConversationNotFound:
        raise _not_found(conversation_id) from None


@router.get("/ui/api/conversations/{conversation_id}/export")
def export_conversation(request: Request, conversation_id: str, format: Literal["md", "json"] = "md") -> Response:
    store = ConversationStore(_db(request))
    try:
        filename = f"conversation-{conversation_id[:8]}.{format}"
        disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
        if format == "json":
            return JSONResponse(store.export_json(conversation_id), headers=disposition)
        return PlainTextResponse(store.export_markdown(conversation_id), media_type="text/markdown",
                                 headers=disposition)
    except ConversationNotFound:
        raise _not_found(conversation_id) from None


# --- presets ---

class PresetBody(BaseModel):
    params: dict[str, Any]


@router.get("/ui/api/presets")
def list_presets(request: Request) -> list[dict[str, Any]]:
    return PresetStore(_db(request)).all()


@router.put("/ui/api/presets/{name}", status_code=204)
def save_preset(request: Request, name: str, body: PresetBody) -> Response:
    try:
        PresetStore(_db(request)).save(name, body.params)
    except PresetError as exc:
        raise HTTPException(400, str(exc)) from None
    return Response(status_code=204)


@router.delete("/ui/api/presets/{name}", status_code=204)
def delete_preset(request: Request, name: str) -> Response:
    try:
        if not PresetStore(_db(request)).delete(name):
            raise HTTPException(404, f"preset {name} not found")
    except PresetError as exc:
        raise HTTPException(400, str(exc)) from None
    return Response(status_code=204)


# --- arena ---

class Vote(BaseModel):
    left: str
    right: str
    winner: Literal["left", "right", "tie"]


@router.get("/ui/api/arena/tally")
def arena_tally(request: Request) -> list[dict[str, Any]]:
    return ArenaTally(_db(request)).standings()


@router.post("/ui/api/arena/votes", status_code=204)
def arena_vote(request: Request, body: Vote) -> Response:
    try:
        left, right = (clean_text(label, "a contestant's label", 256) for label in (body.left, body.right))
    except StoredValueError as exc:
        raise _refused(exc) from None
    ArenaTally(_db(request)).vote(left, right, body.winner)
    return Response(status_code=204)


# --- models and monitor ---

@router.get("/ui/api/models")
async def models(request: Request) -> dict[str, Any]:
    """Stored models with their GGUF facts and a fit badge, and what the server runs with."""
    runtime: Runtime = request.app.state.runtime
    settings: Settings = request.app.state.settings
    manifests = await asyncio.to_thread(runtime.store.list)
    available = psutil.virtual_memory().available
    needed = await asyncio.to_thread(lambda: {m.name: runtime.planned_memory_bytes(m) for m in manifests})
    out = []
    for m in sorted(manifests, key=lambda m: m.name):
        f = m.facts
        out.append({
            "name": m.name,
            "size": m.size,
            "kind": m.kind,
            "quantization": f.quantization,
            "architecture": f.architecture,
            "parameter_count": f.parameter_count,
            "context_length": f.context_length,
            "loaded": runtime.is_loaded(m.name),
            **fit_badge(needed[m.name], available),
        })
    default = next((m for m in manifests if m.name == settings.default_model), None)
    ctx_size = settings.ctx_size or (runtime.planned_context(default) if default is not None else 0)
    return {"models": out, "default_model": settings.default_model, "ctx_size": ctx_size,
            "max_body_bytes": settings.max_body_bytes}


@router.get("/ui/api/voices")
async def voices(request: Request, model: str) -> list[str]:
    """The speakers of a text-to-speech model (loads it, as speaking would next)."""
    runtime: Runtime = request.app.state.runtime
    return await runtime.speech.voices(model)


@router.get("/ui/api/monitor")
async def monitor_snapshot(request: Request) -> dict[str, Any]:
    return monitor.snapshot(request.app.state.runtime, request_log(request))
