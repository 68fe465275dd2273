"""OpenAI's Responses API: ``POST /v1/responses`` (plain or streamed), and the stored responses'
``GET``, ``DELETE``, ``cancel`` and ``input_items``. An adapter over ``Runtime.generate``: the
conversation (a ``previous_response_id``'s stored one, then this request's input) becomes chat
messages, the events become the response object or its event stream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from lokal.options import OptionError, from_openai
from lokal.runtime.errors import ClientDisconnected, InvalidRequest, LokalError
from lokal.runtime.events import Delta, Event, Failed, Finished, finished
from lokal.runtime.request import GenerateRequest, JsonOutput, ToolUse
from lokal.runtime.runtime import Runtime
from lokal.runtime.tools import Tool, argument_fragments, chosen_tools, parse_tools
from lokal.server.errors import APIError, api_error
from lokal.server.generation import caller, collect, get_runtime, option_error
from lokal.server.responses import items as it
from lokal.server.responses.schemas import (
    MAX_METADATA_KEY,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    DeletedResponse,
    InputItemList,
    ResponseRequest,
    TextFormat,
)
from lokal.server.responses.store import ResponseStore, StoredResponse
from lokal.server.security.tracking import current_request

router = APIRouter(prefix="/v1", tags=["openai"])
_SURROGATE = re.compile("[\ud800-\udfff]")
RUNNING = ("queued", "in_progress")


def get_store(request: Request) -> ResponseStore:
    """The app's response store, made on first use from its settings (the UI's SQLite file)."""
    store: ResponseStore | None = getattr(request.app.state, "response_store", None)
    if store is None:
        settings = request.app.state.settings
        store = ResponseStore(settings.database_path, settings.responses_retention_days * 86400)
        request.app.state.response_store = store
    return store


def owner() -> str:
    """Whose stored responses a request sees: its API key's name (empty when keys are off)."""
    facts = current_request.get()
    return (facts.key_name or "") if facts is not None else ""


def _json(body: dict[str, Any]) -> bytes:
    # A lone surrogate ("\ud800" is valid JSON) cannot be encoded as UTF-8: replaced, never a 500.
    return _SURROGATE.sub("\ufffd", json.dumps(body, ensure_ascii=False, separators=(",", ":"))).encode()


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found")


def _refuse_unsupported(req: ResponseRequest) -> None:
    for field in ("conversation", "prompt"):
        if getattr(req, field) is not None:
            raise APIError(400, f"{field} is not supported by lokal", param=field)
    if req.background and req.stream:
        raise APIError(400, "a background response cannot be streamed by lokal; poll GET /v1/responses/{id}",
                       param="stream")
    if req.background and not req.store:
        raise APIError(400, "background responses must be stored (store: true)", param="background")
    meta = req.metadata or {}
    if len(meta) > MAX_METADATA_KEYS or any(len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE
                                            for k, v in meta.items()):
        raise APIError(400, f"metadata takes at most {MAX_METADATA_KEYS} keys of at most {MAX_METADATA_KEY} "
                       f"characters, values of at most {MAX_METADATA_VALUE}", param="metadata")


def _text_format(fmt: TextFormat) -> JsonOutput | None:
    if fmt.type == "json_object":
        return JsonOutput(None, "text.format")
    if fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise InvalidRequest("text.format.schema must be a JSON schema object", param="text.format.schema",
                                 code="invalid_schema")
        return JsonOutput(fmt.json_schema, "text.format")
    return None


def _tools(req: ResponseRequest) -> list[Tool]:
    """Checked function tools; errors name Responses' flat fields (``tools[0].name``)."""
    if not req.tools:
        return []
    try:
        return parse_tools(it.function_tools(req.tools))
    except InvalidRequest as exc:
        exc.message = exc.message.replace(".function.", ".")
        exc.args = (exc.message,)
        exc.param = (exc.param or "tools").replace(".function.", ".")
        raise


def _options(req: ResponseRequest) -> dict[str, Any]:
    try:
        fields = {"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed}
        options = from_openai(fields)
        if req.max_output_tokens is not None:
            options.update(from_openai({"max_tokens": req.max_output_tokens}))
        return options
    except OptionError as exc:
        if exc.key == "max_tokens":
            raise InvalidRequest(f"max_output_tokens: {exc.reason}", param="max_output_tokens") from None
        raise option_error(exc) from None


@router.post("/responses", response_model=None)
async def create_response(
    req: ResponseRequest, request: Request, runtime: Runtime = Depends(get_runtime),
    store: ResponseStore = Depends(get_store),
) -> Response:
    """Create a model response (OpenAI's Responses API): plain JSON, or its event stream with ``stream``."""
    _refuse_unsupported(req)
    who = owner()
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = await asyncio.to_thread(store.get, req.previous_response_id, who)
        if previous is None:
            raise APIError(404, f"Previous response with id '{req.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        if previous.body.get("status") in RUNNING:
            raise APIError(400, f"Previous response with id '{req.previous_response_id}' is still in progress.",
                           param="previous_response_id")
        history = previous.conversation + previous.body.get("output", [])
    conversation = history + it.stored_items(req.input)
    if not any(item["type"] != "reasoning" for item in conversation):
        raise APIError(400, "input is required: a string or a list of input items", param="input")
    messages = it.chat_messages(conversation, req.instructions, first_new=len(history))
    tools = _tools(req)
    choice = it.chat_tool_choice(req.tool_choice)
    offered, forced = chosen_tools(tools, choice) if tools else ([], False)
    fmt = (req.text.format if req.text else None) or TextFormat()
    try:
        stream = await runtime.generate(GenerateRequest(
            model=req.model, messages=messages, options=_options(req), output=_text_format(fmt),
            tools=ToolUse(tuple(tools if choice != "none" else ()), tuple(offered), forced, req.parallel_tool_calls),
            caller=caller(request),
        ))
    except LokalError as exc:
        if exc.param == "messages":  # the runtime's word for the conversation: this API's is input
            exc.param = "input"
        raise
    body: dict[str, Any] = {
        "id": it.new_id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": req.background, "error": None, "incomplete_details": None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": runtime.canonical_name(req.model), "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": None, "summary": None}, "store": req.store, "temperature": req.temperature,
        "text": {"format": fmt.echo()}, "tool_choice": _tool_choice_echo(req),
        "tools": [it.tool_echo(t) for t in tools],
        "top_p": req.top_p, "truncation": "disabled", "usage": None, "user": req.user, "metadata": req.metadata or {},
    }

    parallel = req.parallel_tool_calls is not False

    async def save(final: dict[str, Any]) -> None:
        if req.store:
            await asyncio.to_thread(store.save, who, final, conversation)

    if req.background:
        await save(body)  # in_progress, at once: GET and cancel see it while it runs
        _background(request, body["id"], _run_in_background(stream, body, parallel, save))
        return Response(_json(body), media_type="application/json")
    if req.stream:
        events = _events(stream, body, parallel, save)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        done = await collect(stream, request)
    except ClientDisconnected:
        raise  # nobody is waiting for it: nothing stored
    except LokalError as exc:
        await save(_failed(body, exc))
        raise
    _finish(body, done, it.output_items(done, it.new_id("msg"), it.new_id("rs"), parallel))
    await save(body)
    return Response(_json(body), media_type="application/json")


def _tasks(request: Request) -> dict[str, asyncio.Task[None]]:
    """The background responses running in this process, by id."""
    tasks: dict[str, asyncio.Task[None]] | None = getattr(request.app.state, "response_tasks", None)
    if tasks is None:
        tasks = request.app.state.response_tasks = {}
    return tasks


def _background(request: Request, response_id: str, work: Coroutine[Any, Any, None]) -> None:
    """Run a background response's generation as a task of the app, cancellable by its id."""
    tasks = _tasks(request)
    task = asyncio.create_task(work)
    tasks[response_id] = task
    task.add_done_callback(lambda _: tasks.pop(response_id, None))


async def _run_in_background(stream: AsyncGenerator[Event, None], body: dict[str, Any], parallel: bool,
                             save: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Generate to the end and store the final state: completed, incomplete, failed, or cancelled
    (``POST .../cancel`` cancels this task, which closes the stream and frees the slot)."""
    try:
        done = await finished(stream)
    except LokalError as exc:
        await save(_failed(body, exc))
        return
    except asyncio.CancelledError:
        body["status"] = "cancelled"
        await asyncio.shield(save(body))
        raise
    _finish(body, done, it.output_items(done, it.new_id("msg"), it.new_id("rs"), parallel))
    await save(body)


def _tool_choice_echo(req: ResponseRequest) -> str | dict[str, Any]:
    choice = req.tool_choice or "auto"
    return choice if isinstance(choice, str | dict) else choice.model_dump()


def _finish(body: dict[str, Any], done: Finished, output: list[dict[str, Any]]) -> None:
    incomplete = done.reason.value == "length"
    body.update(
        status="incomplete" if incomplete else "cancelled" if done.reason.value == "cancelled" else "completed",
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        output=output, usage=it.usage(done),
    )
    if body["status"] == "completed":
        body["completed_at"] = int(time.time())


def _failed(body: dict[str, Any], exc: LokalError) -> dict[str, Any]:
    body.update(status="failed", error={"code": exc.code or "server_error", "message": exc.message})
    return body


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json(data) + b"\n\n"


async def _events(
    stream: AsyncGenerator[Event, None], body: dict[str, Any], parallel: bool,
    save: Callable[[dict[str, Any]], Any],
) -> AsyncIterator[bytes]:
    """The response's event stream, in OpenAI's order: created, in_progress, then each output
    item (added, its content part, deltas, done), then completed / incomplete / failed. The
    response is stored once, at the end, in its final state; a client that goes away first
    leaves nothing stored."""
    seq = itertools.count()
    message_id, reasoning_id = it.new_id("msg"), it.new_id("rs")
    opened: list[str] = []  # "reasoning", "message" or a call's id: the items whose events have started, in order
    closed: set[str] = set()  # a reasoning item is done once the answer starts
    finals: dict[int, dict[str, Any]] = {}  # output index -> the item as done: the response's output, in event order
    text, thought = "", ""

    def event(kind: str, **fields: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    def snapshot() -> dict[str, Any]:
        return json.loads(json.dumps(body))

    def open_item(kind: str) -> list[bytes]:
        index = len(opened)
        opened.append(kind)
        item: dict[str, Any]
        part: dict[str, Any]
        if kind == "reasoning":
            item = {"type": "reasoning", "id": reasoning_id, "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [event("response.output_item.added", output_index=index, item=item),
                event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                      part=part)]

    def close_item(item: dict[str, Any]) -> list[bytes]:
        index = opened.index(item["type"])
        finals[index] = item
        part = item["content"][0]
        if item["type"] == "reasoning":
            done = event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                         text=part["text"])
        else:
            done = event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                         text=part["text"], logprobs=[])
        return [done,
                event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                      part=part),
                event("response.output_item.done", output_index=index, item=item)]

    yield event("response.created", response=snapshot())
    yield event("response.in_progress", response=snapshot())
    try:
        async for ev in stream:
            if isinstance(ev, Failed):
                failed = _failed(body, ev.error)
                await save(failed)
                err = api_error(ev.error)
                if err.status < 500:  # the client's doing (a timeout is the server's): OpenAI's error event
                    yield event("error", code=ev.error.code, message=ev.error.message, param=ev.error.param)
                yield event("response.failed", response=snapshot())
                return
            if isinstance(ev, Delta):
                if ev.reasoning:
                    if "reasoning" not in opened and "message" not in opened:
                        for chunk in open_item("reasoning"):
                            yield chunk
                    if "reasoning" in opened:
                        thought += ev.reasoning
                        yield event("response.reasoning_text.delta", item_id=reasoning_id,
                                    output_index=opened.index("reasoning"), content_index=0, delta=ev.reasoning)
                if ev.text:
                    if "reasoning" in opened and "reasoning" not in closed:
                        closed.add("reasoning")
                        for chunk in close_item(it.text_item("reasoning", message_id, reasoning_id, thought,
                                                               "completed")):
                            yield chunk
                    if "message" not in opened:
                        for chunk in open_item("message"):
                            yield chunk
                    text += ev.text
                    yield event("response.output_text.delta", item_id=message_id, output_index=opened.index("message"),
                                content_index=0, delta=ev.text, logprobs=[])
            elif isinstance(ev, Finished):
                output = it.output_items(ev, message_id, reasoning_id, parallel)
                # Items the deltas did not open (a reasoning or message that came whole) open now, in order.
                for item in output:
                    if item["type"] in closed:
                        continue
                    if item["type"] in ("reasoning", "message") and item["type"] not in opened:
                        for chunk in open_item(item["type"]):
                            yield chunk
                        sent = ""
                    else:
                        sent = thought if item["type"] == "reasoning" else text
                    if item["type"] in ("reasoning", "message"):
                        full = item["content"][0]["text"]
                        if full != sent and full.startswith(sent):  # text held back until the end
                            kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
                            extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
                            yield event(f"response.{kind}.delta", item_id=item["id"],
                                        output_index=opened.index(item["type"]), content_index=0,
                                        delta=full[len(sent):], **extra)
                        for chunk in close_item(item):
                            yield chunk
                        continue
                    index = len(opened)
                    opened.append(item["id"])
                    yield event("response.output_item.added", output_index=index,
                                item={**item, "arguments": "", "status": "in_progress"})
                    for piece in argument_fragments(item["arguments"]):
                        yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                    delta=piece)
                    yield event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                name=item["name"], arguments=item["arguments"])
                    yield event("response.output_item.done", output_index=index, item=item)
                    finals[index] = item
                # An item the deltas opened that the final answer lacks (text that turned out to be a
                # call's whitespace) is closed as it was streamed, so every index in the events is in the output.
                status = "incomplete" if ev.reason.value == "length" else "completed"
                for kind, streamed in (("reasoning", thought), ("message", text)):
                    if kind in opened and opened.index(kind) not in finals:
                        for chunk in close_item(it.text_item(kind, message_id, reasoning_id, streamed, status)):
                            yield chunk
                _finish(body, ev, [finals[i] for i in sorted(finals)])
                await save(body)
                kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
                    body["status"], "response.failed")
                yield event(kind, response=snapshot())
                return
    finally:
        await stream.aclose()


async def _stored_or_404(store: ResponseStore, response_id: str) -> StoredResponse:
    found = await asyncio.to_thread(store.get, response_id, owner())
    if found is None:
        raise _not_found(response_id)
    return found


@router.get("/responses/{response_id}", response_model=None)
async def get_response(response_id: str, request: Request, store: ResponseStore = Depends(get_store)) -> Response:
    """A stored response, as it was served (a background one: as it stands now)."""
    found = await _stored_or_404(store, response_id)
    return Response(_json(await _settled(store, found, request)), media_type="application/json")


@router.delete("/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: str, store: ResponseStore = Depends(get_store)) -> DeletedResponse:
    """Delete a stored response."""
    if not await asyncio.to_thread(store.delete, response_id, owner()):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)


@router.post("/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, request: Request, store: ResponseStore = Depends(get_store)) -> Response:
    """Cancel a background response that is still running (one that has ended is returned as it
    is); a synchronous one is refused, as OpenAI refuses it."""
    found = await _stored_or_404(store, response_id)
    if not found.body.get("background"):
        raise APIError(400, "Cannot cancel a synchronous response.", param="response_id")
    task = _tasks(request).get(response_id)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    found = await _stored_or_404(store, response_id)
    return Response(_json(await _settled(store, found, request)), media_type="application/json")


async def _settled(store: ResponseStore, found: StoredResponse, request: Request) -> dict[str, Any]:
    """A stored response's body; one stored as running that no task of this process runs (the
    server stopped under it) is failed, and stored so."""
    body = found.body
    if body.get("status") in RUNNING and found.id not in _tasks(request):
        body.update(status="failed", error={"code": "server_error",
                                            "message": "the server stopped before this response finished"})
        await asyncio.to_thread(store.save, found.owner, body, found.conversation)
    return body


@router.get("/responses/{response_id}/input_items", response_model=InputItemList)
async def list_input_items(
    response_id: str,
    after: str | None = Query(default=None, max_length=256, description="an item id: list the items after it"),
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query(default="desc"),
    store: ResponseStore = Depends(get_store),
) -> InputItemList:
    """The input items a stored response was generated from: earlier turns (its
    ``previous_response_id`` chain's inputs and outputs) and its own input."""
    found = await _stored_or_404(store, response_id)
    listed: list[dict[str, Any]] = list(found.conversation)
    if order == "desc":
        listed.reverse()
    if after is not None:
        ids = [item.get("id") for item in listed]
        if after not in ids:
            raise APIError(400, f"after: no input item {after!r} in response '{response_id}'", param="after")
        listed = listed[ids.index(after) + 1:]
    page = listed[:limit]
    data = json.loads(_json({"data": page}))["data"]
    return InputItemList(data=data, first_id=page[0]["id"] if page else None,
                         last_id=page[-1]["id"] if page else None, has_more=len(listed) > limit)
