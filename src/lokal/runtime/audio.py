"""Audio in and out of the speech models, through PyAV (FFmpeg's libraries, shipped in its wheel):
any upload FFmpeg reads becomes 16 kHz mono float samples for Whisper, and synthesized samples
become wav, mp3, opus, aac, flac or raw pcm."""

from __future__ import annotations

import io
import wave
from typing import Literal, get_args

import numpy as np

from lokal.runtime import errors

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[SpeechFormat, ...] = get_args(SpeechFormat)
MEDIA_TYPES: dict[SpeechFormat, str] = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# OpenAI's transcription uploads; FFmpeg reads more, but a name outside these is refused up front.
UPLOAD_EXTENSIONS = frozenset({"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "opus", "wav", "webm"})
WHISPER_RATE = 16_000
PCM_RATE = 24_000  # OpenAI's pcm: 24 kHz, 16-bit signed little-endian, mono, no header
# (container, codec) per format; the container's muxer writes to memory.
_ENCODERS: dict[SpeechFormat, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac"), "flac": ("flac", "flac"),
}
_OPUS_RATE = 48_000  # libopus takes 8, 12, 16, 24 or 48 kHz


def check_upload_name(filename: str | None) -> None:
    """InvalidRequest for an upload whose extension is not an audio format lokal accepts."""
    if not filename or "." not in filename:
        return  # no extension to judge by: FFmpeg's probe decides
    ext = filename.rsplit(".", 1)[1].lower()
    if ext not in UPLOAD_EXTENSIONS:
        raise errors.InvalidRequest(f"unsupported audio format `.{ext}`; supported: "
                                    f"{', '.join(sorted(UPLOAD_EXTENSIONS))}", param="file",
                                    code="unsupported_format")


def decode_audio(data: bytes) -> np.ndarray:
    """16 kHz mono float32 samples of an audio file's bytes; InvalidRequest when FFmpeg cannot
    read it (corrupt, not audio, no audio stream)."""
    import av
    from faster_whisper.audio import decode_audio as whisper_decode

    if not data:
        raise errors.InvalidRequest("the audio file is empty", param="file", code="invalid_audio")
    try:
        samples = whisper_decode(io.BytesIO(data), sampling_rate=WHISPER_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration, OSError) as exc:
        raise errors.InvalidRequest(f"could not decode the audio file: {exc}", param="file",
                                    code="invalid_audio") from exc
    if samples.size == 0:
        raise errors.InvalidRequest("the audio file holds no audio samples", param="file", code="invalid_audio")
    return np.asarray(samples, dtype=np.float32)


def encode_speech(samples: np.ndarray, rate: int, fmt: SpeechFormat) -> bytes:
    """The bytes of ``samples`` (mono int16) in ``fmt``."""
    if fmt == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.astype("<i2").tobytes())
        return out.getvalue()
    if fmt == "pcm":
        return _resample(samples, rate, PCM_RATE).astype("<i2").tobytes()
    return _encode_with_ffmpeg(samples, rate, fmt)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """int16 mono samples at ``target`` Hz (FFmpeg's resampler)."""
    import av

    if rate == target:
        return samples
    frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=target)
    parts = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def _encode_with_ffmpeg(samples: np.ndarray, rate: int, fmt: SpeechFormat) -> bytes:
    import av

    container_name, codec = _ENCODERS[fmt]
    if fmt == "opus":
        samples, rate = _resample(samples, rate, _OPUS_RATE), _OPUS_RATE
    out = io.BytesIO()
    with av.open(out, "w", format=container_name) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))  # the encoder cuts the frame to its own frame size
        container.mux(stream.encode(None))
    return out.getvalue()
