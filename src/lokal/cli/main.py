"""`lokal` commands: thin wrappers over the store, the runtime and the server."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lokal import __version__
from lokal.config import Settings

app = typer.Typer(
    name="lokal",
    help="Run LLMs locally: pull models, chat, and serve OpenAI-compatible APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A failure the user can act on: printed as one line, exit code 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from lokal.engine.chat_template import TemplateError
    from lokal.engine.engine import PromptTooLong
    from lokal.engine.llama_model import ModelLoadError
    from lokal.store.errors import StoreError

    return (UserError, StoreError, ModelLoadError, TemplateError, PromptTooLong, ValidationError, OSError)


def friendly(fn: F) -> F:
    """Print user errors as one red line and exit 1, never as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[dim]interrupted[/dim]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"lokal {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """lokal: a local LLM runtime."""


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from lokal.store.model_store import ModelStore

    return ModelStore(settings.home)


def _ensure_pulled(settings: Settings, name: str) -> None:
    from lokal.store.pull import pull_model

    store = _store(settings)
    if store.exists(name):
        return
    from lokal.cli.progress import PullProgressBar

    with PullProgressBar(err_console, name) as bar:
        pull_model(store, name, bar)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _ago(when: datetime) -> str:
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


@app.command()
@friendly
def pull(name: Annotated[str, typer.Argument(help="catalog name (smollm2:135m) or hf.co/owner/repo:quant")]) -> None:
    """Download a model into the store (resumes and verifies sha256)."""
    from lokal.cli.progress import PullProgressBar
    from lokal.store.pull import pull_model

    settings = _settings()
    with PullProgressBar(err_console, name) as bar:
        manifest = pull_model(_store(settings), name, bar)
    console.print(f"[green]✔[/green] {manifest.name} ({_human_size(manifest.size)}) is ready")


@app.command("list")
@friendly
def list_models() -> None:
    """List models in the store."""
    models = _store(_settings()).list()
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "SIZE", "QUANTIZATION", "MODIFIED"):
        table.add_column(col)
    for m in models:
        digest = m.digest.split(":", 1)[-1][:12]
        table.add_row(m.name, digest, _human_size(m.size), m.facts.quantization or "?", _ago(m.modified_at))
    console.print(table)


@app.command()
@friendly
def show(
    name: str,
    template: Annotated[bool, typer.Option("--template", help="Print only the chat template.")] = False,
) -> None:
    """Show a model's architecture, size, quantization, context, template and license."""
    m = _store(_settings()).get(name)
    f = m.facts
    tpl = m.template or f.chat_template
    if template:
        console.out(tpl or "(none: lokal uses a fallback for this architecture)", highlight=False)
        return
    params = f"{f.parameter_count / 1e6:.0f}M" if f.parameter_count else "?"
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("name", m.name),
        ("architecture", f.architecture or "?"),
        ("parameters", params),
        ("quantization", f.quantization or "?"),
        ("context length", str(f.context_length or "?")),
        ("embedding length", str(f.embedding_length or "?")),
        ("size", _human_size(m.size)),
        ("digest", m.digest),
        ("source", m.source),
        ("license", (m.license or f.license or "?").strip().splitlines()[0][:100]),
    ]
    if m.system:
        rows.append(("system", m.system))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print("[bold]chat template[/bold]")
    console.out(tpl or "(none: lokal uses a fallback for this architecture)", highlight=False)


@app.command("rm")
@friendly
def remove(names: Annotated[list[str], typer.Argument(help="models to delete")]) -> None:
    """Delete models from the store (blobs shared with other models are kept)."""
    store = _store(_settings())
    for name in names:
        store.delete(name)
        console.print(f"deleted {name}")


@app.command("import")
@friendly
def import_model(
    path: Annotated[Path, typer.Argument(help="a local .gguf file")],
    name: Annotated[str, typer.Option("--name", "-n", help="name to store it under")],
) -> None:
    """Import a local GGUF file into the store (refused if it is not a valid GGUF)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    manifest = _store(_settings()).import_file(path, name)
    console.print(f"[green]✔[/green] imported {manifest.name} ({_human_size(manifest.size)})")


@app.command()
@friendly
def run(
    model: Annotated[str, typer.Argument(help="model name, e.g. smollm2:135m")],
    prompt: Annotated[str | None, typer.Argument(help="one prompt; without it, an interactive chat")] = None,
    system: Annotated[str | None, typer.Option("--system", help="system prompt")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (0 = greedy)")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="stop after this many tokens")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx-size", help="context length")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
) -> None:
    """Chat with a model in the terminal (no server needed; pulls the model if missing)."""
    from lokal.cli.chat import answer, interactive
    from lokal.runtime.runtime import Runtime

    settings = _settings(ctx_size=ctx_size, threads=threads, parallel=1, prefix_cache=True)
    _ensure_pulled(settings, model)
    loaded = Runtime(settings).load_sync(model)
    try:
        params = loaded.sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
        if prompt is None and not sys.stdin.isatty():
            prompt = sys.stdin.read()
        if prompt is not None:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            if answer(loaded, messages, params, console) is None:
                raise typer.Exit(130)
        else:
            interactive(loaded, params, console, system)
    finally:
        loaded.close()


@app.command()
@friendly
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 11435)")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="model to pull if missing and load at start")
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="sequences decoded together (slots); 0 = as many as memory allows, max 8")
    ] = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx-size", help="context length per slot")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help="waiting requests before 503")] = None,
    no_preload: Annotated[bool, typer.Option("--no-preload", help="load models only on first request")] = False,
    keep_alive: Annotated[
        str | None,
        typer.Option("--keep-alive", help='idle time before a model unloads: "5m" (default), "1h30m", 0, -1 = never'),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API (and /docs) on one port."""
    import uvicorn

    from lokal.runtime.runtime import Runtime
    from lokal.server.app import create_app

    settings = _settings(
        host=host, port=port, parallel=parallel, ctx_size=ctx_size, threads=threads, max_queue=max_queue,
        default_model=model, keep_alive=keep_alive,
    )
    if not no_preload:
        _ensure_pulled(settings, settings.default_model)
    preload = [] if no_preload else [settings.default_model]
    app_ = create_app(settings, Runtime(settings), preload=preload)
    console.print(
        f"lokal {__version__} serving on [bold]http://{settings.host}:{settings.port}[/bold] "
        f"(slots={settings.parallel or 'auto'}, ctx={settings.ctx_size}, threads={settings.threads})"
    )
    uvicorn.run(app_, host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    app()
