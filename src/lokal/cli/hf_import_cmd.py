"""``lokal import ./hf-folder`` and the end of ``lokal pull hf.co/<repo>`` for a safetensors
repository: the conversion's progress, and what the stored model does not carry over."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lokal.cli.progress import PullProgressBar
from lokal.config import Settings
from lokal.store.model_store import ModelStore
from lokal.workshop.hf_import import ImportResult, import_hf_folder


def import_folder(settings: Settings, folder: Path, name: str, out_type: str, console: Console) -> ImportResult:
    """Convert the Hugging Face model in ``folder`` and store it as ``name``, showing the
    converter's progress on ``console``; then print what was not carried over."""
    with PullProgressBar(console, str(folder)) as bar:
        result = import_hf_folder(ModelStore(settings.home), folder, name, settings, out_type=out_type, progress=bar)
    print_notes(result, console)
    return result


def print_notes(result: ImportResult, console: Console) -> None:
    """What the imported model does not carry over, and what the converter warned of: one line each."""
    for note in result.notes:
        console.print(f"[yellow]not carried over:[/yellow] {escape(note)}")
    for warning in result.warnings:
        console.print(f"[dim]converter warning: {escape(warning)}[/dim]")
