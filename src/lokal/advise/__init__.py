"""Will it fit, what to run, what it costs: hardware facts, the memory estimate, cost and advice."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

JSON_KINDS = ("advise", "cost", "recommend")


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema that ``lokal KIND --json`` output follows (``schemas/KIND.schema.json``)."""
    if kind not in JSON_KINDS:
        raise ValueError(f"no schema for {kind!r} (one of {', '.join(JSON_KINDS)})")
    text = resources.files("lokal.advise").joinpath("schemas", f"{kind}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
