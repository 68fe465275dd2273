"""Ollama's streaming format: one JSON object per line (``application/x-ndjson``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

MEDIA_TYPE = "application/x-ndjson"


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def ndjson_response(objects: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Stream objects as NDJSON. Closing the response (a client that disconnects) closes the
    generator, which aborts whatever sequence it was reading."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for obj in objects:
                yield line(obj)
        finally:
            await objects.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type=MEDIA_TYPE, headers={"Cache-Control": "no-cache"})
