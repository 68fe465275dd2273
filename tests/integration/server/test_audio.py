"""The audio endpoints through the openai SDK on a live server: lokal speaks a sentence with its
Piper voice and transcribes it back with Whisper tiny (word error rate printed and bounded), every
transcript and speech format, translation, /api/ps, and the 4xx of bad input."""

from __future__ import annotations

import io
import json
import re
import wave
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from lokal.bench.metrics import word_error_rate
from lokal.runtime.audio import PCM_RATE, decode_audio
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

STT = "whisper:tiny"
TTS = "piper:joe-medium"
VOICE = "joe"
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."


@pytest.fixture(scope="session")
def speech_server(model_home: Path, server: LiveServer) -> LiveServer:
    """The shared server, with whisper:tiny and piper:joe-medium in its store (pulled once per machine)."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    for name in (STT, TTS):
        pull_model(ModelStore(model_home), name)
    return server


@pytest.fixture
def oai(speech_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=speech_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def spoken(speech_server: LiveServer) -> bytes:
    """SENTENCE as lokal speaks it (wav)."""
    client = openai.OpenAI(base_url=speech_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    return client.audio.speech.create(model=TTS, voice=VOICE, input=SENTENCE, response_format="wav").content


def test_spoken_sentence_transcribes_back_within_20_percent_word_error_rate(oai: openai.OpenAI,
                                                                               spoken: bytes) -> None:
    text = oai.audio.transcriptions.create(model=STT, file=("sentence.wav", spoken), response_format="json").text
    wer = word_error_rate(SENTENCE, text)
    print(f"\nround trip: {text!r}, word error rate {wer:.1%}")
    assert wer <= 0.20


def test_transcript_formats_text_srt_vtt_and_verbose_json_with_words(oai: openai.OpenAI, spoken: bytes) -> None:
    text = oai.audio.transcriptions.create(model=STT, file=("s.wav", spoken), response_format="text")
    assert isinstance(text, str) and word_error_rate(SENTENCE, text) <= 0.20
    srt = oai.audio.transcriptions.create(model=STT, file=("s.wav", spoken), response_format="srt")
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", srt)
    vtt = oai.audio.transcriptions.create(model=STT, file=("s.wav", spoken), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"00:00:\d\d\.\d{3} --> 00:00:\d\d\.\d{3}\n\S", vtt)
    verbose = oai.audio.transcriptions.create(model=STT, file=("s.wav", spoken), response_format="verbose_json",
                                              language="en", timestamp_granularities=["word", "segment"])
    duration = len(decode_audio(spoken)) / 16_000
    assert verbose.language == "en" and abs(verbose.duration - duration) < 0.05
    assert verbose.segments and verbose.segments[0].start >= 0 and verbose.segments[-1].end <= duration + 0.5
    words = verbose.words or []
    assert [w.word.lower().strip(".,") for w in words][:4] == ["the", "quick", "brown", "fox"]
    assert all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))


def test_translation_of_english_speech_is_english_text(oai: openai.OpenAI, spoken: bytes) -> None:
    result = oai.audio.translations.create(model=STT, file=("s.wav", spoken))
    assert word_error_rate(SENTENCE, result.text) <= 0.20


def test_openai_model_names_mean_the_stores_model_of_that_kind(oai: openai.OpenAI, spoken: bytes) -> None:
    text = oai.audio.transcriptions.create(model="whisper-1", file=("s.wav", spoken), response_format="text")
    assert word_error_rate(SENTENCE, text) <= 0.20
    audio = oai.audio.speech.create(model="tts-1", voice=VOICE, input="Hello.", response_format="flac").content
    assert audio[:4] == b"fLaC"


def test_speech_in_every_format_decodes_to_the_same_length_and_speed_shortens_it(oai: openai.OpenAI,
                                                                                  spoken: bytes) -> None:
    with wave.open(io.BytesIO(spoken)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        seconds = w.getnframes() / w.getframerate()
    assert 2.0 < seconds < 8.0
    # Piper draws phoneme durations with noise: the same text is a few percent longer or shorter each time.
    for fmt in ("mp3", "opus", "aac", "flac"):
        audio = oai.audio.speech.create(model=TTS, voice=VOICE, input=SENTENCE, response_format=fmt).content
        assert abs(len(decode_audio(audio)) / 16_000 - seconds) < 0.1 * seconds, fmt
    pcm = oai.audio.speech.create(model=TTS, voice=VOICE, input=SENTENCE, response_format="pcm").content
    assert abs(len(pcm) / 2 / PCM_RATE - seconds) < 0.1 * seconds
    fast = oai.audio.speech.create(model=TTS, voice=VOICE, input=SENTENCE, response_format="wav", speed=2.0).content
    assert len(decode_audio(fast)) / 16_000 < seconds * 0.7


def test_speech_models_are_listed_with_their_kind_shown_loaded_in_ps_and_unloaded_with_keep_alive_0(
        speech_server: LiveServer, spoken: bytes) -> None:
    tags = {m["name"]: m["details"].get("kind") for m in httpx.get(speech_server.url + "/api/tags").json()["models"]}
    assert tags[STT] == "speech-to-text" and tags[TTS] == "text-to-speech"
    running = {m["name"]: m for m in httpx.get(speech_server.url + "/api/ps").json()["models"]}
    assert TTS in running and running[TTS]["size"] > 50_000_000
    # Ollama's way to unload a model (what `lokal stop` sends) unloads a speech model too
    assert httpx.post(speech_server.url + "/api/generate", json={"model": TTS, "keep_alive": 0}).status_code == 200
    assert TTS not in {m["name"] for m in httpx.get(speech_server.url + "/api/ps").json()["models"]}


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def test_bad_uploads_get_a_clear_4xx(speech_server: LiveServer, spoken: bytes) -> None:
    url = speech_server.url + "/v1/audio/transcriptions"

    def post(name: str, data: bytes, model: str = STT) -> httpx.Response:
        return httpx.post(url, files={"file": (name, data)}, data={"model": model}, timeout=60)

    err = _error(post("noise.wav", np.random.default_rng(0).bytes(50_000)), 400)
    assert "could not decode" in str(err["message"]) and err["param"] == "file"
    assert _error(post("empty.mp3", b""), 400)["code"] == "invalid_audio"
    assert _error(post("notes.txt", spoken), 400)["code"] == "unsupported_format"
    too_big = post("big.wav", b"\0" * (8 * 1024 * 1024 + 1))
    assert too_big.status_code == 413 and "LOKAL_MAX_BODY_BYTES" in too_big.json()["error"]["message"]
    err = _error(post("s.wav", spoken, model="smollm2:135m"), 400)
    assert err["code"] == "model_kind_mismatch" and "chat model" in str(err["message"])
    assert _error(post("s.wav", spoken, model=TTS), 400)["code"] == "model_kind_mismatch"
    assert _error(post("s.wav", spoken, model="nope:1b"), 404)["code"] == "model_not_found"
    assert "file" in str(_error(httpx.post(url, data={"model": STT}), 400)["message"])


def test_bad_speech_requests_get_a_clear_4xx(speech_server: LiveServer) -> None:
    url = speech_server.url + "/v1/audio/speech"

    def post(**body: object) -> httpx.Response:
        return httpx.post(url, content=json.dumps({"model": TTS, "voice": VOICE, "input": "hi", **body}),
                          headers={"Content-Type": "application/json"}, timeout=60)

    assert _error(post(input="   "), 400)["param"] == "input"
    err = _error(post(voice="alloy"), 400)
    assert err["code"] == "unknown_voice" and "joe" in str(err["message"])
    assert _error(post(response_format="ogg"), 400)["param"] == "response_format"
    assert _error(post(speed=5), 400)["param"] == "speed"
    assert _error(post(model=STT), 400)["code"] == "model_kind_mismatch"
    assert _error(post(model="smollm2:135m"), 400)["code"] == "model_kind_mismatch"
