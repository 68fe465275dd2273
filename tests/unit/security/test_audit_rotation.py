"""The audit log rotates by size and keeps the configured number of old files."""

from __future__ import annotations

import json
from pathlib import Path

from lokal.server.security.audit import AuditLog
from lokal.server.security.tracking import RequestFacts


def test_the_audit_log_rotates_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    audit = AuditLog(path, max_bytes=2048, backups=2)
    for i in range(200):
        audit.record(RequestFacts(method="GET", path=f"/v1/models/{i}", client="127.0.0.1:1", started_at=0.0))
    audit.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 2048
        assert all(json.loads(line)["method"] == "GET" for line in p.read_text().splitlines())
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["route"] == "/v1/models/199"
