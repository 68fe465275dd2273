"""keep_alive values as Ollama accepts them, and the runtime's idle clock."""

from __future__ import annotations

import math

import pytest

from lokal.config import Settings
from lokal.runtime.keep_alive import FOREVER, format_keep_alive, parse_keep_alive
from lokal.runtime.runtime import Residency


@pytest.mark.parametrize(("value", "seconds"), [
    ("5m", 300), ("1h30m", 5400), ("10s", 10), ("1.5h", 5400), ("500ms", 0.5), ("2h0m5s", 7205),
    (0, 0), ("0", 0), (300, 300), (2.5, 2.5), ("300", 300),
    (-1, FOREVER), ("-1", FOREVER), ("-5m", FOREVER),
])
def test_durations_numbers_and_negatives(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "m", "1h 2m", "soon", None, True, [5], "nan"])
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_settings_default_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOKAL_KEEP_ALIVE", raising=False)  # the default, whatever this shell exports
    assert Settings().keep_alive_s == 300
    monkeypatch.setenv("LOKAL_KEEP_ALIVE", "1h30m")
    assert Settings().keep_alive_s == 5400
    assert Settings(keep_alive="10s").keep_alive_s == 10  # an explicit value wins over the environment
    monkeypatch.setenv("LOKAL_KEEP_ALIVE", "later")
    with pytest.raises(ValueError, match="keep_alive"):
        Settings()
    monkeypatch.delenv("LOKAL_KEEP_ALIVE")
    assert Settings(keep_alive="-1").keep_alive_s == math.inf
    with pytest.raises(ValueError):
        Settings(keep_alive="later")
    assert format_keep_alive(5400) == "1h30m0s" and format_keep_alive(FOREVER) == "forever"


def test_expiry_counts_from_the_last_activity_and_pauses_while_busy() -> None:
    import time
    from datetime import UTC, datetime, timedelta

    r = Residency(keep_alive_s=60, idle_since=time.monotonic() - 20)
    left = r.expires_at(busy=False) - datetime.now(UTC)
    assert timedelta(seconds=38) < left < timedelta(seconds=41)
    busy_left = r.expires_at(busy=True) - datetime.now(UTC)
    assert timedelta(seconds=58) < busy_left <= timedelta(seconds=60)
    assert Residency(keep_alive_s=FOREVER, idle_since=0).expires_at(busy=False).year > 2200
