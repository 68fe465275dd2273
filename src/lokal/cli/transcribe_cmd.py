"""`lokal transcribe FILE`: the text of an audio file, through the runtime's speech-to-text model,
with a progress bar (seconds of audio done) on stderr."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lokal.config import Settings

DEFAULT_MODEL = "whisper:tiny"
err_console = Console(stderr=True)


def transcribe(
    file: Annotated[Path, typer.Argument(help="an audio file (any format FFmpeg reads: wav, mp3, m4a, ogg, …)",
                                         exists=True, dir_okay=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="a speech-to-text model")] = DEFAULT_MODEL,
    language: Annotated[str | None, typer.Option(help="the spoken language (ISO-639-1, en); default: detected")] = None,
    translate: Annotated[bool, typer.Option("--translate", help="English text of any spoken language")] = False,
    prompt: Annotated[str | None, typer.Option(help="text that came before, or words to spell right")] = None,
    output_format: Annotated[Literal["text", "json", "srt", "vtt", "verbose_json"],
                             typer.Option("--format", help="what to print")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Transcribe an audio file (pulls the model on first use)."""
    from lokal.runtime.runtime import Runtime
    from lokal.runtime.speech import Segment
    from lokal.server.audio import srt, verbose_json, vtt

    settings = Settings()
    _ensure_pulled(settings, model)
    runtime = Runtime(settings)
    audio = file.read_bytes()

    with Progress(TextColumn("transcribing"), BarColumn(), TextColumn("{task.completed:.0f} s of audio"),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task("audio", total=None)

        def on_segment(segment: Segment, duration: float) -> None:
            progress.update(task, total=duration, completed=segment.end)

        async def run():  # type: ignore[no-untyped-def]
            try:
                return await runtime.speech.transcribe(model, audio, task="translate" if translate else "transcribe",
                                                       language=language, prompt=prompt,
                                                       word_timestamps=output_format == "verbose_json",
                                                       on_segment=on_segment)
            finally:
                await runtime.close()

        result = asyncio.run(run())
    if output_format == "json":
        text = json.dumps({"text": result.text}, ensure_ascii=False)
    elif output_format == "verbose_json":
        text = json.dumps(verbose_json(result, True, True), ensure_ascii=False, indent=2)
    elif output_format == "srt":
        text = srt(result.segments)
    elif output_format == "vtt":
        text = vtt(result.segments)
    else:
        text = result.text
    if output is not None:
        output.write_text(text if text.endswith("\n") else text + "\n")
    else:
        typer.echo(text.rstrip("\n"))
    err_console.print(f"{result.duration:.1f} s of audio in {result.seconds:.1f} s "
                      f"(real-time factor {result.seconds / max(result.duration, 1e-9):.3f}), "
                      f"language {result.language}", style="dim", highlight=False)


def _ensure_pulled(settings: Settings, name: str) -> None:
    from lokal.cli.progress import PullProgressBar
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    store = ModelStore(settings.home)
    if not store.exists(name):
        with PullProgressBar(err_console, name) as bar:
            pull_model(store, name, bar)


def register(app: typer.Typer, friendly: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Add ``lokal transcribe`` to the CLI (``friendly``: its errors as one line, exit 1)."""
    app.command("transcribe")(friendly(transcribe))
