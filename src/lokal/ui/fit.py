"""The models page's fits / tight / won't-fit badge for this machine: the same judgement as
``lokal advise`` and ``lokal pull`` (``lokal.advise.memory.fit_for``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lokal.advise.memory import fit_for
from lokal.store.manifest import Manifest


def fit_badge(manifest: Manifest, ctx_size: int, available_bytes: int, home: Path | None = None) -> dict[str, Any]:
    """``{"fit": "fits"|"tight"|"wont_fit", "needed_bytes", "available_bytes"}`` for one slot of
    ``ctx_size`` tokens. With ``home`` (the store) the weights are read from the GGUF's tensors."""
    fit = fit_for(manifest, ctx_size, available_bytes, home=home)
    return {"fit": fit.fit, "needed_bytes": fit.needed_bytes, "available_bytes": available_bytes}
