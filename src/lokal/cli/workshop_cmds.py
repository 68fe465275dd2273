"""`lokal quantize` and `lokal eval`: a stored model in another llama.cpp type, and its perplexity."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lokal.config import Settings
from lokal.store.progress import PullProgress

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def warn(line: str) -> None:
    """A warning on stderr, in yellow."""
    err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(line)}", highlight=False, soft_wrap=True)


class TensorBar:
    """The quantizer's progress: a bar over the model's tensors for each quantization, each other
    step as a line."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, p: PullProgress) -> None:
        if p.total:
            task = self.tasks.get(p.status)
            if task is None:
                task = self.tasks[p.status] = self.progress.add_task(escape(p.status), total=p.total)
            self.progress.update(task, total=p.total, completed=p.completed or 0)
        elif p.status != "success" and p.status not in self.tasks and not p.status.startswith("quantizing"):
            self.progress.console.print(f"[dim]{escape(p.status)}[/dim]", highlight=False)


def tensor_progress() -> Progress:
    """A Rich progress display for quantizing (tensors done of all) on stderr."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"),
                    TimeElapsedColumn(), console=err_console, transient=False)


def quantize(
    model: Annotated[str, typer.Argument(help="a model in the store, e.g. qwen2.5-coder:0.5b")],
    to: Annotated[str, typer.Option("--to", "-t", help="the type: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K, F16, …")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="the new model's name (default MODEL-<type>)")]
    = None,
    allow_requantize: Annotated[bool, typer.Option(
        "--allow-requantize", help="quantize a model that is already quantized (its error adds up)")] = False,
    threads: Annotated[int | None, typer.Option(help="threads (default LOKAL_THREADS)")] = None,
) -> None:
    """Quantize a stored model with llama.cpp into a new model (name:tag-q4_k_m); the template and
    parameters carry over."""
    from lokal.store.model_store import ModelStore
    from lokal.workshop.quantize import parse_quant_type, quantize_model

    settings = Settings()
    qtype = parse_quant_type(to)  # an unknown type fails before anything else is read
    with tensor_progress() as progress:
        manifest = quantize_model(ModelStore(settings.home), model, qtype, name=name, allow_requantize=allow_requantize,
                                  threads=threads or settings.threads, progress=TensorBar(progress), warn=warn)
    console.print(f"[green]✔[/green] {escape(manifest.name)} ({manifest.size / 1e6:.1f} MB, {qtype.name}) is ready")


def evaluate(
    model: Annotated[str, typer.Argument(help="a model in the store")],
    ctx: Annotated[int, typer.Option(help="tokens per chunk (llama-perplexity's -c)")] = 512,
    batch: Annotated[int, typer.Option(help="tokens per llama_decode: chunks of ctx evaluated together (-b)")] = 2048,
    chunks: Annotated[int | None, typer.Option(help="evaluate only the first N chunks (--chunks)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="a UTF-8 text instead of lokal's built-in one",
                                              exists=True, dir_okay=False)] = None,
    threads: Annotated[int | None, typer.Option(help="threads (default LOKAL_THREADS)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Perplexity of a model on a fixed text (lokal's built-in public-domain text unless --file),
    as llama.cpp's llama-perplexity computes it: lower is better; compare models on the same text and ctx."""
    from lokal.store.kinds import GENERATING_KINDS
    from lokal.store.model_store import ModelStore
    from lokal.workshop.perplexity import PerplexityError, perplexity

    settings = Settings()
    store = ModelStore(settings.home)
    manifest = store.get(model)
    if manifest.kind not in GENERATING_KINDS:
        raise _fail(f"{manifest.name} is of kind {manifest.kind}: perplexity needs a model that generates text")
    gguf = store.gguf_path(model)
    text = file.read_text(encoding="utf-8") if file else None
    columns = (TextColumn("perplexity"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("chunks", total=None)
            result = perplexity(gguf, text, ctx=ctx, batch=batch, threads=threads or settings.threads,
                                max_chunks=chunks, text_name=str(file) if file else None,
                                progress=lambda done, total: progress.update(task, completed=done, total=total))
    except PerplexityError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps({"model": manifest.name, **result.to_dict()}))
        return
    console.print(f"{escape(model)}: [bold]{result}[/bold]", highlight=False)
    console.print(f"[dim]{result.tokens} tokens scored in {result.chunks} chunks of {result.ctx} "
                  f"({escape(result.text)}), {result.seconds:.1f} s[/dim]", highlight=False)


def register(app: typer.Typer, friendly: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Add ``lokal quantize`` and ``lokal eval`` to the CLI (``friendly``: errors as one line, exit 1)."""
    app.command("quantize")(friendly(quantize))
    app.command("eval")(friendly(evaluate))
