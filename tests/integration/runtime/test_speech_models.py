"""Speech models in the runtime, in-process: loaded on first use, unloaded by keep_alive, requests
on one model taken in turn; a recording longer than Whisper's 30-second window, with progress; a
decode past its time limit is a 400, not a hang; `lokal transcribe`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.runtime import speech
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.runtime import Runtime
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

pytestmark = pytest.mark.slow
STT, TTS = "whisper:tiny", "piper:joe-medium"
SENTENCE = "Local models answer questions without sending any data away."


@pytest.fixture
async def runtime(model_home: Path) -> AsyncIterator[Runtime]:
    for name in (STT, TTS):
        pull_model(ModelStore(model_home), name)
    rt = Runtime(Settings(home=model_home, keep_alive="1s", threads=2))
    yield rt
    await rt.close()


async def test_speech_models_load_on_first_use_and_unload_after_their_keep_alive(runtime: Runtime) -> None:
    assert not runtime.speech.is_loaded(TTS)
    wav, seconds = await runtime.speech.speak(TTS, SENTENCE, voice="joe", fmt="wav", keep_alive=60)
    assert runtime.speech.is_loaded(TTS) and seconds > 1
    # two transcriptions at once: taken in turn on the one model, both answered
    first, second = await asyncio.gather(runtime.speech.transcribe(STT, wav), runtime.speech.transcribe(STT, wav))
    assert first.text == second.text and "local models" in first.text.lower()
    assert {s.name for s in runtime.speech.status()} == {TTS, STT}
    await asyncio.sleep(1.6)  # the server's keep_alive (1 s) for whisper, the request's (60 s) for the voice
    assert [s.name for s in runtime.speech.status()] == [TTS]
    await runtime.speech.speak(TTS, "again", voice="joe", fmt="wav", keep_alive=0)
    assert not runtime.speech.is_loaded(TTS)  # keep_alive 0: unloaded as soon as it is done


async def test_a_decode_past_its_time_limit_is_refused_not_waited_for(runtime: Runtime,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    wav, _ = await runtime.speech.speak(TTS, SENTENCE * 8, voice="joe", fmt="flac")
    monkeypatch.setattr(speech, "DECODE_TIMEOUT_S", 0.001)
    with pytest.raises(InvalidRequest, match="decoding the audio file took more than"):
        await runtime.speech.transcribe(STT, wav)


async def test_lokal_transcribe_prints_subtitles_and_its_real_time_factor(runtime: Runtime, tmp_path: Path) -> None:
    audio, _ = await runtime.speech.speak(TTS, SENTENCE, voice="joe", fmt="mp3")
    (tmp_path / "talk.mp3").write_bytes(audio)
    done = subprocess.run([sys.executable, "-m", "lokal.cli.main", "transcribe", str(tmp_path / "talk.mp3"),
                           "--format", "vtt"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LOKAL_HOME": str(runtime.settings.home)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("WEBVTT\n\n00:00:00.000 --> ") and "local models" in done.stdout.lower()
    assert "real-time factor" in done.stderr and "language en" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "lokal.cli.main", "transcribe", __file__], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "LOKAL_HOME": str(runtime.settings.home)})
    assert bad.returncode == 1 and "could not decode the audio file" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_a_recording_longer_than_whispers_window_is_transcribed_in_order_with_progress(
        runtime: Runtime) -> None:
    passage = " ".join(f"Sentence number {n} of this recording is about the {topic}." for n, topic in
                       enumerate(["weather", "garden", "harbour", "library", "kitchen", "mountain", "river",
                                  "market", "station", "school", "bridge", "forest"], 1))
    wav, seconds = await runtime.speech.speak(TTS, passage, voice="joe", fmt="wav")
    assert seconds > 32  # more than one 30-second window
    progress: list[tuple[float, float]] = []
    result = await runtime.speech.transcribe(STT, wav, language="en",
                                             on_segment=lambda s, total: progress.append((s.end, total)))
    assert result.segments[-1].end > 30 and [s.start for s in result.segments] == sorted(s.start for s in
                                                                                         result.segments)
    assert [p[0] for p in progress] == [s.end for s in result.segments] and progress[-1][1] == result.duration
    from lokal.bench.metrics import word_error_rate

    wer = word_error_rate(passage, result.text)
    print(f"\n{seconds:.1f} s in {len(result.segments)} segments, word error rate {wer:.1%}")
    assert wer <= 0.20
