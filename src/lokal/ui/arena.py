"""The arena's tally: which of two answers the user preferred, kept in the UI's SQLite file."""

from __future__ import annotations

import time
from typing import Any

from lokal.ui.database import UiDatabase


class ArenaTally:
    def __init__(self, db: UiDatabase) -> None:
        self.db = db

    def vote(self, left: str, right: str, winner: str) -> None:
        """``left``/``right`` label the contestants (a model, or a model with a preset)."""
        if winner not in ("left", "right", "tie"):
            raise ValueError("winner must be left, right or tie")
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO arena_votes (left_label, right_label, winner, created_at) VALUES (?, ?, ?, ?)",
                         (left, right, winner, time.time()))

    def standings(self) -> list[dict[str, Any]]:
        """Per contestant: wins, losses, ties; most wins first."""
        table: dict[str, dict[str, Any]] = {}
        with self.db.reading() as conn:
            rows = conn.execute("SELECT left_label, right_label, winner FROM arena_votes").fetchall()
        for left, right, winner in rows:
            for label in (left, right):
                table.setdefault(label, {"label": label, "wins": 0, "losses": 0, "ties": 0})
            if winner == "tie":
                table[left]["ties"] += 1
                table[right]["ties"] += 1
            else:
                won, lost = (left, right) if winner == "left" else (right, left)
                table[won]["wins"] += 1
                table[lost]["losses"] += 1
        return sorted(table.values(), key=lambda r: (-r["wins"], r["losses"], r["label"]))
