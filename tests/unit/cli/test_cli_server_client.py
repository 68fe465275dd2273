"""How `lokal ps`/`stop` find the server and show expiry times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lokal.cli.main import _server_url, _until
from lokal.config import Settings


def test_server_url_from_settings() -> None:
    assert _server_url(Settings(host="127.0.0.1", port=1234)) == "http://127.0.0.1:1234"
    assert _server_url(Settings(host="0.0.0.0", port=1234)) == "http://127.0.0.1:1234"
    assert _server_url(Settings(host="::1", port=1234)) == "http://[::1]:1234"
    assert _server_url(Settings(host="http://box:9/", port=1234)) == "http://box:9"


def test_until_reads_like_ollama_ps() -> None:
    now = datetime.now(UTC)
    assert _until((now + timedelta(minutes=4, seconds=30)).isoformat()) == "4 minutes from now"
    assert _until((now + timedelta(hours=2, minutes=1)).isoformat()) == "2 hours from now"
    assert _until((now + timedelta(seconds=20)).isoformat()) == "less than a minute from now"
    assert _until((now - timedelta(seconds=1)).isoformat()) == "Stopping..."
    assert _until((now + timedelta(days=365 * 290)).isoformat().replace("+00:00", "Z")) == "Forever"
    assert _until(None) == "Forever"
