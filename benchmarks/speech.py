"""Real-time factors of lokal's speech models on this machine: piper:joe-medium speaks a passage of
about a minute, whisper:tiny transcribes it back (several 30-second windows), and the word error
rate of the round trip. Run: LOKAL_HOME=.test-home python benchmarks/speech.py [--threads N]"""

from __future__ import annotations

import argparse
import asyncio
import time

from lokal.bench.metrics import word_error_rate
from lokal.config import Settings
from lokal.runtime.runtime import Runtime

PASSAGE = (
    "Local language models run on your own computer, so your questions never leave the machine. "
    "A small model answers quickly even without a graphics card, and a larger one writes better text. "
    "The runtime loads a model the first time it is asked for and keeps it in memory for a few minutes. "
    "When nobody has used it for a while, the memory is given back to the other programs. "
    "Speech works the same way: one model turns text into audio, and another turns audio back into text. "
    "Long recordings are cut into windows of thirty seconds, and each window is decoded in turn. "
    "The numbers below say how many seconds of work each second of audio takes on two processor cores. "
    "A real-time factor under one means the machine is faster than the speaker."
)


async def main(threads: int) -> None:
    runtime = Runtime(Settings(threads=threads))
    try:
        await runtime.speech.speak("piper:joe-medium", "warm up", voice="joe", fmt="wav")
        started = time.perf_counter()
        wav, seconds = await runtime.speech.speak("piper:joe-medium", PASSAGE, voice="joe", fmt="wav")
        tts_s = time.perf_counter() - started
        await runtime.speech.transcribe("whisper:tiny", wav[:200_000])  # loads the model
        result = await runtime.speech.transcribe("whisper:tiny", wav)
    finally:
        await runtime.close()
    print(f"threads: {threads}")
    print(f"synthesis (piper:joe-medium): {seconds:.1f} s of audio in {tts_s:.2f} s, real-time factor "
          f"{tts_s / seconds:.3f}")
    print(f"transcription (whisper:tiny, int8, beam 5): {result.duration:.1f} s of audio in {result.seconds:.2f} s, "
          f"real-time factor {result.seconds / result.duration:.3f}, {len(result.segments)} segments")
    print(f"round-trip word error rate: {word_error_rate(PASSAGE, result.text):.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    asyncio.run(main(parser.parse_args().threads))
