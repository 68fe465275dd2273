"""The models page's fits / tight / won't-fit badge for this machine: the same judgement as
``lokal advise`` and ``lokal pull`` (``lokal.advise.memory.classify``) on the runtime's memory
figure for the model (the same number the monitor, /api/ps and /metrics show)."""

from __future__ import annotations

from typing import Any

from lokal.advise.memory import classify


def fit_badge(needed_bytes: int, available_bytes: int) -> dict[str, Any]:
    """``{"fit": "fits"|"tight"|"wont_fit", "needed_bytes", "available_bytes"}``."""
    return {"fit": classify(needed_bytes, available_bytes), "needed_bytes": needed_bytes,
            "available_bytes": available_bytes}
