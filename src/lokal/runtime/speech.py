"""Speech models: speech-to-text (Whisper through faster-whisper) and text-to-speech (Piper voices).

``SpeechModels`` loads a stored speech model on first use and unloads it once its keep_alive
(the request's, else LOKAL_KEEP_ALIVE) has passed since its last request, as the runtime does for
chat models; at most ``max_loaded_models`` speech models stay loaded (least recently used idle one
out first). A model's memory figure is its weights' bytes. One request runs on a model at a time;
the others wait on the event loop. The work itself runs in a worker thread."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from lokal.config import Settings
from lokal.runtime import errors
from lokal.runtime.audio import WHISPER_RATE, SpeechFormat, decode_audio, encode_speech
from lokal.runtime.keep_alive import Reaper
from lokal.store import errors as store_errors
from lokal.store.archive import unpack, unpacked_folder
from lokal.store.kinds import ModelKind
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name

log = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 60.0  # FFmpeg reading one upload; past it the request gets a 400, not a hang
MAX_SPEECH_CHARS = 4096  # OpenAI's limit on /v1/audio/speech input
MIN_SPEED, MAX_SPEED = 0.25, 4.0
T = TypeVar("T")
# The `speech` extra's libraries, by the module each kind (and decoding) needs.
_LIBRARIES: dict[ModelKind, tuple[str, ...]] = {"speech-to-text": ("faster_whisper", "av"),
                                                "text-to-speech": ("piper", "onnxruntime", "av")}


def require_libraries(kind: ModelKind) -> None:
    """ModelLoadFailed naming the extra to install when a library ``kind`` needs is missing."""
    missing = [m for m in _LIBRARIES[kind] if importlib.util.find_spec(m) is None]
    if missing:
        raise errors.ModelLoadFailed(f"{kind} models need {', '.join(missing)}: pip install 'lokal[speech]'",
                                     param="model")


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    """One of Whisper's segments (up to a 30-second window's worth of speech)."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True)
class Transcription:
    task: Literal["transcribe", "translate"]
    language: str
    duration: float  # seconds of audio
    text: str
    segments: list[Segment]
    seconds: float  # wall time of the transcription (decode excluded)


@dataclass
class LoadedSpeech:
    """A speech model in memory: a faster-whisper ``WhisperModel`` or a ``PiperVoice``."""

    name: str
    manifest: Manifest
    model: Any
    memory_bytes: int
    keep_alive_s: float
    idle_since: float
    busy: int = 0
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def kind(self) -> ModelKind:
        return self.manifest.kind

    def voices(self) -> list[str]:
        """A Piper voice's speaker names (its dataset's name when it has one speaker)."""
        config = self.model.config
        return sorted(config.speaker_id_map) if config.speaker_id_map else [self.model.config_dataset]


@dataclass(frozen=True)
class SpeechStatus:
    name: str
    kind: ModelKind
    memory_bytes: int
    expires_at: datetime
    manifest: Manifest


class SpeechModels:
    """The loaded speech models of one runtime (see the module's docstring)."""

    def __init__(self, settings: Settings, store: ModelStore,
                 check_kind: Callable[[str, frozenset[ModelKind], str], None]) -> None:
        self.settings = settings
        self.store = store
        self._check_kind = check_kind
        self._loaded: OrderedDict[str, LoadedSpeech] = OrderedDict()
        self._loading: dict[str, asyncio.Lock] = {}
        self._reaper = Reaper("speech-keep-alive", self.unload_expired, lambda: bool(self._loaded))

    # ---- the service ---------------------------------------------------------------------------
    async def transcribe(self, model: str, audio: bytes, *, task: Literal["transcribe", "translate"] = "transcribe",
                         language: str | None = None, prompt: str | None = None, temperature: float = 0.0,
                         word_timestamps: bool = False, keep_alive: float | None = None,
                         on_segment: Callable[[Segment, float], None] | None = None) -> Transcription:
        """The text of an audio file's bytes (any format FFmpeg reads). ``on_segment(segment,
        duration)`` is called from the worker thread as each segment is done (progress)."""
        self._check_kind(model, frozenset({"speech-to-text"}), "transcribe audio")
        require_libraries("speech-to-text")
        try:
            samples = await asyncio.wait_for(asyncio.to_thread(decode_audio, audio), DECODE_TIMEOUT_S)
        except TimeoutError as exc:
            raise errors.InvalidRequest(f"decoding the audio file took more than {DECODE_TIMEOUT_S:.0f} s",
                                        param="file", code="invalid_audio") from exc
        loaded = await self.get(model, keep_alive)
        return await self._run(loaded, transcribe_samples, loaded.model, samples, task, language, prompt,
                               temperature, word_timestamps, on_segment)

    async def speak(self, model: str, text: str, *, voice: str, fmt: SpeechFormat = "mp3", speed: float = 1.0,
                    keep_alive: float | None = None) -> tuple[bytes, float]:
        """Speech for ``text`` in ``fmt``, and its length in seconds."""
        self._check_kind(model, frozenset({"text-to-speech"}), "synthesize speech")
        require_libraries("text-to-speech")
        if not text.strip():
            raise errors.InvalidRequest("input is empty: there is no text to speak", param="input")
        if len(text) > MAX_SPEECH_CHARS:
            raise errors.InvalidRequest(f"input is {len(text)} characters; at most {MAX_SPEECH_CHARS}", param="input")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise errors.InvalidRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}", param="speed")
        loaded = await self.get(model, keep_alive)
        voices = loaded.voices()
        if voice not in voices:
            raise errors.InvalidRequest(f"model `{loaded.name}` has no voice `{voice}`; its voices: "
                                        f"{', '.join(voices)}", param="voice", code="unknown_voice")
        speaker = loaded.model.config.speaker_id_map.get(voice)  # None: a one-speaker voice
        samples, rate = await self._run(loaded, synthesize, loaded.model, text, speaker, speed)
        encoded = await asyncio.to_thread(encode_speech, samples, rate, fmt)
        return encoded, len(samples) / rate

    async def voices(self, model: str) -> list[str]:
        self._check_kind(model, frozenset({"text-to-speech"}), "synthesize speech")
        return (await self.get(model)).voices()

    async def _run(self, loaded: LoadedSpeech, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, once the model's earlier requests are done."""
        loaded.busy += 1
        try:
            async with loaded.turn:
                return await asyncio.to_thread(fn, *args)
        finally:
            loaded.busy -= 1
            loaded.idle_since = time.monotonic()
            if loaded.keep_alive_s <= 0 and not loaded.busy:
                await self.unload(loaded.name)

    # ---- loading and keep_alive ----------------------------------------------------------------
    async def get(self, name: str, keep_alive: float | None = None) -> LoadedSpeech:
        """The loaded model, loading it on first use (ModelNotFound, ModelLoadFailed)."""
        try:
            key = str(parse_model_name(name))
            manifest = self.store.get(key)
        except store_errors.InvalidModelName as exc:
            raise errors.InvalidModelName(str(exc), param="model") from exc
        except store_errors.ModelNotFound as exc:
            raise errors.ModelNotFound(name, str(exc)) from exc
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                try:
                    model = await asyncio.to_thread(self._load, manifest)
                except (OSError, RuntimeError, ValueError, store_errors.StoreError) as exc:
                    raise errors.ModelLoadFailed(f"could not load model `{key}`: {exc}") from exc
                loaded = LoadedSpeech(key, manifest, model, manifest.size, self.settings.keep_alive_s,
                                      time.monotonic())
                self._loaded[key] = loaded
                await self._evict_beyond_limit(keep=key)
        self._loaded.move_to_end(key)
        loaded.keep_alive_s = self.settings.keep_alive_s if keep_alive is None else keep_alive
        loaded.idle_since = time.monotonic()
        self._reaper.start()
        return loaded

    def _load(self, manifest: Manifest) -> Any:
        if manifest.format != "tar":
            raise ValueError("a speech model is a folder (stored as a tar); this one is a GGUF")
        folder = unpack(self.store.blob_path(manifest.digest), unpacked_folder(self.store.home, manifest.digest))
        log.info("loading %s (%s) from %s", manifest.name, manifest.kind, folder)
        if manifest.kind == "speech-to-text":
            from faster_whisper import WhisperModel

            return WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=self.settings.threads)
        return load_piper(folder, self.settings.threads)

    def status(self) -> list[SpeechStatus]:
        from lokal.runtime.runtime import Residency

        return [SpeechStatus(m.name, m.kind, m.memory_bytes,
                             Residency(m.keep_alive_s, m.idle_since).expires_at(busy=m.busy > 0), m.manifest)
                for m in self._loaded.values()]

    def is_loaded(self, name: str) -> bool:
        return str(parse_model_name(name)) in self._loaded

    async def unload(self, name: str) -> bool:
        loaded = self._loaded.pop(str(parse_model_name(name)), None)
        if loaded is None:
            return False
        log.info("unloading %s", loaded.name)
        loaded.model = None  # CTranslate2 and onnxruntime free their memory with the object
        return True

    async def unload_expired(self) -> None:
        now = time.monotonic()
        for key, loaded in list(self._loaded.items()):
            if loaded.busy:
                loaded.idle_since = now
            elif now - loaded.idle_since >= loaded.keep_alive_s:
                await self.unload(key)

    async def _evict_beyond_limit(self, keep: str) -> None:
        for key, loaded in list(self._loaded.items()):
            if len(self._loaded) <= self.settings.max_loaded_models:
                return
            if key != keep and not loaded.busy:
                await self.unload(key)

    async def close(self) -> None:
        await self._reaper.stop()
        for key in list(self._loaded):
            await self.unload(key)


def load_piper(folder: Path, threads: int) -> Any:
    """A Piper voice from its folder (``<voice>.onnx`` and ``<voice>.onnx.json``), with its
    dataset's name as ``config_dataset`` (the voice name of a one-speaker voice)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    onnx = next(iter(sorted(folder.glob("*.onnx"))), None)
    if onnx is None:
        raise ValueError(f"no .onnx voice in {folder}")
    raw = json.loads(onnx.with_name(onnx.name + ".json").read_text())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])
    voice = PiperVoice(session=session, config=PiperConfig.from_dict(raw), use_tashkeel=False)
    voice.config_dataset = str(raw.get("dataset") or onnx.stem)  # type: ignore[attr-defined]
    return voice


def transcribe_samples(model: Any, samples: np.ndarray, task: Literal["transcribe", "translate"],
                       language: str | None, prompt: str | None, temperature: float, word_timestamps: bool,
                       on_segment: Callable[[Segment, float], None] | None = None) -> Transcription:
    """Whisper over 16 kHz samples: faster-whisper cuts the audio into 30-second windows and
    decodes them in turn (a long file is chunked that way). A temperature of 0 falls back to
    higher ones when a window's decoding fails its checks, as OpenAI's API does."""
    started = time.perf_counter()
    temperatures: float | tuple[float, ...] = temperature if temperature > 0 else (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    try:
        pieces, info = model.transcribe(samples, language=language or None, task=task, initial_prompt=prompt or None,
                                        temperature=temperatures, word_timestamps=word_timestamps,
                                        beam_size=5)
    except ValueError as exc:  # an unknown language code
        raise errors.InvalidRequest(str(exc), param="language") from exc
    duration = len(samples) / WHISPER_RATE
    segments = []
    for i, s in enumerate(pieces):
        segment = Segment(id=i, seek=s.seek, start=s.start, end=s.end, text=s.text, tokens=list(s.tokens),
                          temperature=s.temperature or 0.0, avg_logprob=s.avg_logprob,
                          compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob,
                          words=[Word(w.word, w.start, w.end) for w in s.words or []])
        segments.append(segment)
        if on_segment is not None:
            on_segment(segment, duration)
    text = "".join(s.text for s in segments).strip()
    return Transcription(task, info.language, duration, text, segments, time.perf_counter() - started)


def synthesize(voice: Any, text: str, speaker_id: int | None, speed: float) -> tuple[np.ndarray, int]:
    """Mono int16 samples of ``text`` spoken by a Piper voice, and their rate."""
    from piper.config import SynthesisConfig

    base = voice.config.length_scale or 1.0
    config = SynthesisConfig(speaker_id=speaker_id, length_scale=base / speed)
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=config)]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples, voice.config.sample_rate
