"""The models page's fits / tight / won't-fit badge for this machine.

NOTE: ``lokal.advise.memory.fit_for`` (being written in parallel) is the intended single source
of this judgement; until it exists this module estimates from GGUF facts: weights plus the f16
KV cache of one slot at the configured context, against the RAM available now.
"""

from __future__ import annotations

from typing import Any

from lokal.runtime.sizing import kv_bytes_per_token
from lokal.store.manifest import Manifest

TIGHT_SHARE = 0.7  # above this share of available RAM, other programs will start to feel it


def fit_badge(manifest: Manifest, ctx_size: int, available_bytes: int) -> dict[str, Any]:
    """``{"fit": "fits"|"tight"|"wont_fit", "needed_bytes", "available_bytes"}``."""
    try:
        from lokal.advise.memory import fit_for  # type: ignore[import-not-found]
    except ImportError:
        fit_for = None
    if fit_for is not None:
        try:
            return _from_advise(fit_for(manifest, ctx_size, available_bytes), available_bytes)
        except Exception:  # its signature is not settled yet: fall back to the estimate below
            pass
    per_token = kv_bytes_per_token(manifest.facts) or 0
    needed = manifest.size + per_token * ctx_size
    if needed <= TIGHT_SHARE * available_bytes:
        fit = "fits"
    elif needed <= available_bytes:
        fit = "tight"
    else:
        fit = "wont_fit"
    return {"fit": fit, "needed_bytes": needed, "available_bytes": available_bytes}


def _from_advise(result: Any, available_bytes: int) -> dict[str, Any]:
    fit = str(getattr(result, "fit", result)).lower().replace("'", "").replace("-", "_").replace(" ", "_")
    if fit not in ("fits", "tight", "wont_fit"):
        raise ValueError(fit)
    return {"fit": fit, "needed_bytes": getattr(result, "needed_bytes", None), "available_bytes": available_bytes}
