"""A speech request on a lokal installed without the `speech` extra: a 422 that says what to install."""

from __future__ import annotations

import importlib.util

import pytest

from lokal.runtime import speech
from lokal.runtime.errors import ModelLoadFailed


def test_a_missing_speech_library_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "piper" else real(name, *a))
    with pytest.raises(ModelLoadFailed, match=r"need piper: pip install 'lokal\[speech\]'"):
        speech.require_libraries("text-to-speech")
    speech.require_libraries("speech-to-text")  # faster-whisper and PyAV are there
