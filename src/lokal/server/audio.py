"""OpenAI's audio endpoints: ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``
(multipart upload, Whisper) and ``POST /v1/audio/speech`` (JSON in, audio bytes out, a Piper
voice), on the runtime's speech models (lokal.runtime.speech).

Uploads are limited by LOKAL_MAX_BODY_BYTES (413 beyond). OpenAI's own model names
(``whisper-1``, ``tts-1``, …) mean the store's first model of the kind, when no stored model has
that name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from lokal.runtime.audio import MEDIA_TYPES, SpeechFormat, check_upload_name
from lokal.runtime.runtime import Runtime
from lokal.runtime.speech import MAX_SPEECH_CHARS, Segment, Transcription
from lokal.server.generation import get_runtime
from lokal.store.errors import StoreError
from lokal.store.kinds import ModelKind

router = APIRouter(tags=["audio"])

TranscriptFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
OPENAI_MODELS: dict[ModelKind, frozenset[str]] = {
    "speech-to-text": frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"}),
    "text-to-speech": frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"}),
}


def _model(runtime: Runtime, name: str, kind: ModelKind) -> str:
    """``name``, or for one of OpenAI's names that the store lacks, its first model of ``kind``."""
    if name not in OPENAI_MODELS[kind] or runtime.store.exists(name):
        return name
    try:
        return next((m.name for m in sorted(runtime.store.list(), key=lambda m: m.name) if m.kind == kind), name)
    except StoreError:
        return name


async def _transcription(runtime: Runtime, task: Literal["transcribe", "translate"], file: UploadFile, model: str,
                         response_format: TranscriptFormat, language: str | None, prompt: str | None,
                         temperature: float, granularities: Sequence[str]) -> Response:
    check_upload_name(file.filename)
    words = "word" in granularities
    result = await runtime.speech.transcribe(_model(runtime, model, "speech-to-text"), await file.read(), task=task,
                                             language=language, prompt=prompt, temperature=temperature,
                                             word_timestamps=words)
    if response_format == "text":
        return PlainTextResponse(result.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(srt(result.segments))
    if response_format == "vtt":
        return PlainTextResponse(vtt(result.segments), media_type="text/vtt")
    if response_format == "verbose_json":
        return JSONResponse(verbose_json(result, words, "segment" in granularities or not words))
    return JSONResponse({"text": result.text})


Granularities = Annotated[list[Literal["word", "segment"]], Form(alias="timestamp_granularities[]")]


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    file: Annotated[UploadFile, File(description="the audio: flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav or webm")],
    model: Annotated[str, Form(min_length=1, max_length=512)],
    response_format: Annotated[TranscriptFormat, Form()] = "json",
    language: Annotated[str | None, Form(max_length=16, description="ISO-639-1 code; None: detected")] = None,
    prompt: Annotated[str | None, Form()] = None,
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    timestamp_granularities: Granularities = [],  # noqa: B006 (FastAPI copies defaults)
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    """The text spoken in an audio file, in its language."""
    return await _transcription(runtime, "transcribe", file, model, response_format, language, prompt, temperature,
                                timestamp_granularities)


@router.post("/v1/audio/translations")
async def translations(
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(min_length=1, max_length=512)],
    response_format: Annotated[TranscriptFormat, Form()] = "json",
    prompt: Annotated[str | None, Form()] = None,
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    """The speech of an audio file, in English."""
    return await _transcription(runtime, "translate", file, model, response_format, None, prompt, temperature, [])


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # instructions, stream_format: not supported, ignored

    model: str = Field(min_length=1, max_length=512)
    input: str = Field(max_length=MAX_SPEECH_CHARS)
    voice: str = Field(min_length=1)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)


@router.post("/v1/audio/speech", response_class=Response)
async def speech(body: SpeechRequest, runtime: Runtime = Depends(get_runtime)) -> Response:
    """``input`` spoken by ``voice`` (one of the model's voices) as audio bytes."""
    audio, seconds = await runtime.speech.speak(_model(runtime, body.model, "text-to-speech"), body.input,
                                                voice=body.voice, fmt=body.response_format, speed=body.speed)
    return Response(audio, media_type=MEDIA_TYPES[body.response_format],
                    headers={"X-Audio-Duration": f"{seconds:.3f}"})


# ---- transcript formats -------------------------------------------------------------------------
def _clock(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def srt(segments: list[Segment]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times."""
    return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n\n"
                   for i, s in enumerate(segments, 1))


def vtt(segments: list[Segment]) -> str:
    """WebVTT: a header, then ``HH:MM:SS.mmm`` cues."""
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n\n"
                                  for s in segments)


def verbose_json(result: Transcription, words: bool, segments: bool) -> dict[str, object]:
    """OpenAI's verbose transcript (``language`` is Whisper's code, ``en``, where OpenAI writes
    ``english``)."""
    body: dict[str, object] = {"task": result.task, "language": result.language,
                               "duration": round(result.duration, 3), "text": result.text}
    if segments:
        body["segments"] = [{"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text,
                             "tokens": s.tokens, "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                             "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}
                            for s in result.segments]
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                         for s in result.segments for w in s.words]
    return body
