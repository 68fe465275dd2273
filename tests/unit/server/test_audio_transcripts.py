"""Transcript formats of /v1/audio/transcriptions: SubRip and WebVTT cues, OpenAI's verbose JSON."""

from __future__ import annotations

from lokal.runtime.speech import Segment, Transcription, Word
from lokal.server.audio import srt, verbose_json, vtt

SEGMENTS = [
    Segment(0, 0, 0.0, 2.5, " Hello there.", [1, 2], 0.0, -0.2, 1.1, 0.01, [Word(" Hello", 0.0, 0.6)]),
    Segment(1, 250, 2.5, 3723.042, " General Kenobi.", [3], 0.2, -0.3, 1.2, 0.02),
]


def test_srt_numbers_cues_from_one_with_comma_milliseconds() -> None:
    assert srt(SEGMENTS) == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                             "2\n00:00:02,500 --> 01:02:03,042\nGeneral Kenobi.\n\n")


def test_vtt_has_its_header_and_dot_milliseconds() -> None:
    assert vtt(SEGMENTS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
                             "00:00:02.500 --> 01:02:03.042\nGeneral Kenobi.\n\n")


def test_verbose_json_has_segments_and_words_only_when_asked() -> None:
    result = Transcription("transcribe", "en", 3723.1, "Hello there. General Kenobi.", SEGMENTS, 1.0)
    body = verbose_json(result, words=True, segments=False)
    assert body == {"task": "transcribe", "language": "en", "duration": 3723.1, "text": result.text,
                    "words": [{"word": "Hello", "start": 0.0, "end": 0.6}]}
    segments = verbose_json(result, words=False, segments=True)["segments"]
    assert isinstance(segments, list) and segments[1]["seek"] == 250 and segments[1]["temperature"] == 0.2
