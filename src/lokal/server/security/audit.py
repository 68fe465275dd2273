"""The audit log: one JSON line per API request in ``$LOKAL_HOME/logs/audit.log``, rotated by size.

Fields: ``time`` (ISO 8601, UTC), ``request_id`` (the client's ``X-Request-ID`` or a new one, sent
back in the response's ``X-Request-ID``), ``key`` (key name, null when auth is off), ``client``,
``method``, ``route`` (the path as requested), ``status``, ``model``, ``prompt_tokens``,
``completion_tokens``, ``ttft_s``, ``latency_s``; ``prompt`` only with ``LOKAL_AUDIT_PROMPTS=true``.
Liveness, readiness, metrics scrapes and the UI's static files are not logged.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path

from lokal.server.security.tracking import RequestFacts

QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
QUIET_PREFIXES = ("/ui/static/",)


class AuditLog:
    """Writes RequestFacts as JSON lines through its own logger (never the root logger's handlers)."""

    def __init__(self, path: Path, max_bytes: int, backups: int, with_prompts: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.with_prompts = with_prompts
        self._logger = logging.getLogger(f"lokal.audit.{path}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        for old in list(self._logger.handlers):  # a second app on the same file replaces the first's handler
            self._logger.removeHandler(old)
            old.close()
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

    def record(self, facts: RequestFacts) -> dict[str, object] | None:
        """Sink for TrackingMiddleware: write one line (returns it, for tests)."""
        if facts.path in QUIET_PATHS or facts.path.startswith(QUIET_PREFIXES):
            return None
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(facts.started_at, UTC).isoformat(timespec="milliseconds"),
            "request_id": facts.request_id,
            "key": facts.key_name,
            "client": facts.client,
            "method": facts.method,
            "route": facts.path,
            "status": facts.status,
            "model": facts.model,
            "prompt_tokens": facts.prompt_tokens,
            "completion_tokens": facts.completion_tokens,
            "ttft_s": round(facts.ttft_s, 4) if facts.ttft_s is not None else None,
            "latency_s": round(facts.latency_s, 4),
        }
        if self.with_prompts:
            line["prompt"] = facts.prompt_text
        self._logger.info(json.dumps(line, ensure_ascii=False))
        return line

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
