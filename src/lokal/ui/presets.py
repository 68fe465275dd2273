"""Sampling presets: lokal's built-in ones and those the user saves (in the UI's SQLite file)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from lokal.options import BY_NAME, UI_KEYS, OptionError, check
from lokal.ui.database import StoredValueError, UiDatabase, clean_json, clean_text, load_json_object

log = logging.getLogger("lokal.ui")
MAX_NAME_CHARS = 100

PARAMETERS = UI_KEYS  # the UI's parameter names: lokal.options' canonical names

BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    "precise": {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1},
    "balanced": {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1},
    "creative": {"temperature": 1.1, "top_p": 0.98, "top_k": 100, "min_p": 0.02, "repeat_penalty": 1.05},
}


class PresetError(ValueError):
    """A preset that cannot be saved or deleted."""


class PresetStore:
    def __init__(self, db: UiDatabase) -> None:
        self.db = db

    def all(self) -> list[dict[str, Any]]:
        """Built-in presets first, then the user's, each ``{name, params, builtin}``. A stored preset
        with unreadable params is listed with empty ones (and can be deleted); one without a
        readable name is left out."""
        presets = [{"name": n, "params": p, "builtin": True} for n, p in BUILTIN_PRESETS.items()]
        with self.db.reading() as conn:
            for row in conn.execute("SELECT name, params FROM presets ORDER BY created_at"):
                if not isinstance(row["name"], str):
                    log.warning("a preset named %r cannot be read; left out", row["name"])
                    continue
                params = load_json_object(row["params"], f"preset {row['name']!r}")
                presets.append({"name": row["name"], "params": params, "builtin": False})
        return presets

    def save(self, name: str, params: dict[str, Any]) -> None:
        try:
            name = clean_text(name, "a preset's name", MAX_NAME_CHARS).strip()
        except StoredValueError as exc:
            raise PresetError(str(exc)) from None
        if not name:
            raise PresetError("a preset needs a name")
        if name in BUILTIN_PRESETS:
            raise PresetError(f'"{name}" is a built-in preset')
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise PresetError(f"unknown parameters: {', '.join(unknown)}")
        try:
            params = {k: check(BY_NAME[k], v) for k, v in params.items()}
            params = clean_json(json.loads(json.dumps(params)), "params")  # tuples as lists, keys as text
        except (OptionError, StoredValueError) as exc:
            raise PresetError(str(exc)) from None
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO presets (name, params, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET params = excluded.params",
                (name, json.dumps(params), time.time()),
            )

    def delete(self, name: str) -> bool:
        if name in BUILTIN_PRESETS:
            raise PresetError(f'"{name}" is a built-in preset')
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM presets WHERE name = ?", (name,)).rowcount > 0
