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
from rich.markup import escape
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

    from lokal.engine.llama_model import ModelLoadError
    from lokal.runtime.errors import LokalError
    from lokal.server.security.keys import KeyStoreError
    from lokal.store.errors import StoreError
    from lokal.store.modelfile import ModelfileError
    from lokal.templates.chat_template import TemplateError

    return (
        UserError, LokalError, StoreError, ModelfileError, ModelLoadError, TemplateError, ValidationError, OSError,
        KeyStoreError,  # a corrupt keys.json, wherever a command reads it
    )


def friendly(fn: F) -> F:
    """Print user errors as one red line and exit 1, never as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[dim]interrupted[/dim]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(escape(version_text()), highlight=False, soft_wrap=True)
        raise typer.Exit()


def version_text() -> str:
    """``lokal 0.1.0 · llama.cpp 0.3.36+lokal.2 · backend cuda (CUDA0: NVIDIA H100 80GB HBM3)``, and
    a note when the build and the machine's NVIDIA GPUs disagree (``Backend.note``, docs/gpu.md)."""
    from lokal.advise.hardware import nvidia_gpus
    from lokal.engine.devices import backend

    try:
        import llama_cpp

        llama = f"llama.cpp {llama_cpp.__version__}"
    except Exception:  # a broken install still prints lokal's version
        llama = "llama.cpp missing"
    found = backend()
    text = f"lokal {__version__} · {llama} · backend {found.summary()}"
    note = found.note(tuple(g.name for g in nvidia_gpus()))
    return text + (f"\nnote: {note}" if note else "")


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """lokal: a local LLM runtime."""


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment under the command's flags; a bad value is one UserError that
    names the setting, its flag and its variable."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        where = f"{field} (--{field.replace('_', '-')}, LOKAL_{field.upper()})" if error["loc"] else field
        raise UserError(f"{where}: {message}") from None


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
    from lokal.cli.hf_import_cmd import print_notes
    from lokal.cli.progress import PullProgressBar
    from lokal.workshop.hf_import import pull_or_convert

    settings = _settings()
    if not _store(settings).exists(name):
        from lokal.cli.advise_cmds import warn_if_wont_fit

        warn_if_wont_fit(name, settings)  # the same estimate as lokal advise and the web UI's badge
    with PullProgressBar(err_console, name) as bar:
        result = pull_or_convert(_store(settings), name, settings, bar)  # hf.co/ safetensors are converted
    manifest = result.manifest
    kind = "" if manifest.kind == "chat" else f", {manifest.kind}"
    console.print(f"[green]✔[/green] {escape(manifest.name)} ({_human_size(manifest.size)}{kind}) is ready")
    print_notes(result, err_console)


@app.command("list")
@friendly
def list_models() -> None:
    """List models in the store."""
    models = _store(_settings()).list()
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "SIZE", "KIND", "QUANTIZATION", "MODIFIED"):
        table.add_column(col)
    for m in models:
        digest = m.digest.split(":", 1)[-1][:12]
        quant = escape(m.facts.quantization or "?")
        table.add_row(escape(m.name), digest, _human_size(m.size), m.kind, quant, _ago(m.modified_at))
    console.print(table)


@app.command()
@friendly
def show(
    name: str,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Print the model's Modelfile.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Print only the parameters.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Print only the chat template.")] = False,
    system: Annotated[bool, typer.Option("--system", help="Print only the system prompt.")] = False,
    license_: Annotated[bool, typer.Option("--license", help="Print only the license.")] = False,
) -> None:
    """Show a model's architecture, size, quantization, context, template and license."""
    if sum((modelfile, parameters, template, system, license_)) > 1:
        raise UserError("choose one of --modelfile, --parameters, --template, --system, --license")
    m = _store(_settings()).get(name)
    f = m.facts
    tpl = m.template or f.chat_template
    if modelfile:
        from lokal.store.modelfile import render_modelfile

        console.out(render_modelfile(m), highlight=False, end="")
        return
    if parameters:
        from lokal.store.modelfile import quote

        for key, value in m.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                console.out(f"{key:<20}{quote(item) if isinstance(item, str) else item}", highlight=False)
        return
    if template:
        console.out(tpl or "(none: lokal uses a fallback for this architecture)", highlight=False)
        return
    if system:
        console.out(m.system or "", highlight=False)
        return
    if license_:
        console.out(m.license or f.license or "", highlight=False)
        return
    params = f"{f.parameter_count / 1e6:.0f}M" if f.parameter_count else "?"
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("name", m.name),
        ("kind", m.kind),
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
    if m.projector:
        rows.append(("vision projector", m.projector))
    if m.system:
        rows.append(("system", m.system))
    if m.parameters:
        rows.append(("sampling", ", ".join(f"{k}={v}" for k, v in m.parameters.items())))
    if m.messages:
        rows.append(("messages", f"{len(m.messages)} (lokal show --modelfile lists them)"))
    for k, v in rows:
        table.add_row(k, escape(v))  # names, paths, system prompts: text, not markup
    console.print(table)
    console.print("[bold]chat template[/bold]")
    console.out(tpl or "(none: lokal uses a fallback for this architecture)", highlight=False)


@app.command()
@friendly
def create(
    name: Annotated[str, typer.Argument(help="name of the new model, e.g. pirate:latest")],
    file: Annotated[Path, typer.Option("--file", "-f", help="the Modelfile")] = Path("Modelfile"),
) -> None:
    """Create a model from a Modelfile (FROM a model, a .gguf file or a sha256 digest)."""
    from lokal.store.create import create_model
    from lokal.store.modelfile import MAX_MODELFILE_CHARS, ModelfileError, parse_modelfile

    if not file.is_file():
        raise UserError(f"{file}: no such Modelfile (give one with -f)")
    if file.stat().st_size > MAX_MODELFILE_CHARS * 4:
        raise UserError(f"{file}: too large for a Modelfile")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{file}: not a UTF-8 text file (byte {raw[exc.start]:#04x} on line {line}); save the Modelfile as UTF-8"
        ) from None
    try:
        spec = parse_modelfile(text)
    except ModelfileError as exc:
        raise UserError(f"{file}: {exc}") from None
    from lokal.cli.progress import PullProgressBar
    from lokal.store.progress import PullProgress

    bar: PullProgressBar | None = None

    def report(p: PullProgress) -> None:
        # Only a pull or an import of the base is worth a bar; a plain create prints one line.
        nonlocal bar
        if bar is None and p.status in ("using base model", "writing manifest", "success"):
            return
        if bar is None:
            bar = PullProgressBar(err_console, spec.from_).__enter__()
        bar(p)

    try:
        manifest = create_model(_store(_settings()), name, spec, base_dir=file.resolve().parent, progress=report)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    console.print(f"[green]✔[/green] created {escape(manifest.name)}")


@app.command("cp")
@friendly
def copy_model(
    source: Annotated[str, typer.Argument(help="model to copy")],
    destination: Annotated[str, typer.Argument(help="new name")],
) -> None:
    """Copy a model under a new name (the weights are shared, not copied)."""
    manifest = _store(_settings()).copy(source, destination)
    console.print(f"copied '{escape(source)}' to '{escape(manifest.name)}'")


def _server_url(settings: Settings) -> str:
    host = settings.host.strip()
    if "://" in host:
        return host.rstrip("/")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _server_request(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the running `lokal serve`; its absence or an error is one UserError line."""
    import httpx

    url = _server_url(_settings())
    try:
        response = httpx.request(method, url + path, json=body, timeout=60)
    except httpx.HTTPError:
        raise UserError(f"lokal serve is not running at {url} (start it with 'lokal serve')") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        if isinstance(message, dict):
            message = message.get("message")
        raise UserError(f"{message or response.reason_phrase} (HTTP {response.status_code} from {url}{path})")
    return data


def _until(expires_at: str | None) -> str:
    if not expires_at:
        return "Forever"
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at
    seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds > 100 * 365 * 86400:  # keep_alive -1: Ollama reports a date centuries away
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} from now"
    return "less than a minute from now"


@app.command()
@friendly
def ps() -> None:
    """List the models loaded by the running server."""
    data = _server_request("GET", "/api/ps")
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"):
        table.add_column(col)
    for m in (data or {}).get("models", []):
        digest = str(m.get("digest", "")).split(":", 1)[-1][:12]
        size = int(m.get("size") or 0)
        processor = processor_text(size, int(m.get("size_vram") or 0))
        context = str(m.get("context_length") or "")
        name = escape(str(m.get("name") or m.get("model", "?")))
        table.add_row(name, digest, _human_size(size), processor, context, _until(m.get("expires_at")))
    console.print(table)


def processor_text(size: int, size_vram: int) -> str:
    """Where a model runs, as ``ollama ps`` says it: 100% GPU, 100% CPU or 48%/52% CPU/GPU."""
    if size_vram <= 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu = int((size - size_vram) * 100 / size + 0.5)  # Go's math.Round: halves away from zero
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


@app.command()
@friendly
def stop(model: Annotated[str, typer.Argument(help="a model loaded by the running server")]) -> None:
    """Unload a model from the running server (keep_alive 0)."""
    if not _running_on_server(model):
        raise UserError(f'model "{model}" is not running (see lokal ps)')
    _server_request("POST", "/api/generate", {"model": model, "keep_alive": 0})


def _running_on_server(model: str) -> bool:
    """Whether the running server has ``model`` loaded (UserError when no server answers)."""
    from lokal.store.names import parse_model_name

    wanted = str(parse_model_name(model))
    loaded = (_server_request("GET", "/api/ps") or {}).get("models", [])
    names = {str(m.get("name") or m.get("model")).lower() for m in loaded}
    return wanted.lower() in names or model.lower() in names


@app.command("rm")
@friendly
def remove(names: Annotated[list[str], typer.Argument(help="models to delete")]) -> None:
    """Delete models from the store (blobs shared with other models are kept); a running server
    unloads them first (an adapter model's adapter is freed, its base stays)."""
    store = _store(_settings())
    for name in names:
        try:
            if _running_on_server(name):
                _server_request("POST", "/api/generate", {"model": name, "keep_alive": 0})
        except UserError:
            pass  # no server, or it could not unload it: deleting the files is what was asked
        store.delete(name)
        console.print(f"deleted {escape(name)}")


@app.command("import")
@friendly
def import_model(
    path: Annotated[Path, typer.Argument(help="a local .gguf file, or a Hugging Face model folder (safetensors)")],
    name: Annotated[str, typer.Option("--name", "-n", help="name to store it under")],
    quantize: Annotated[
        str | None, typer.Option("--quantize", "-q", help="a folder's GGUF type: F16 (default), BF16, F32, Q8_0, "
                                 "or a lokal quantize type (Q4_K_M, …)")
    ] = None,
) -> None:
    """Import a local GGUF file, or convert a Hugging Face safetensors folder (docs/workshop.md), into the store."""
    if path.is_dir():
        from lokal.cli.hf_import_cmd import import_folder

        manifest = import_folder(_settings(), path, name, quantize or "F16", err_console).manifest
        kind = "" if manifest.kind == "chat" else f", {manifest.kind}"
        console.print(f"[green]✔[/green] imported {escape(manifest.name)} ({_human_size(manifest.size)}{kind})")
        return
    if quantize is not None:
        raise UserError("--quantize converts a Hugging Face folder; a GGUF file is imported as it is")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    manifest = _store(_settings()).import_file(path, name)
    console.print(f"[green]✔[/green] imported {escape(manifest.name)} ({_human_size(manifest.size)})")


@app.command()
@friendly
def run(
    model: Annotated[str, typer.Argument(help="model name, e.g. smollm2:135m")],
    prompt: Annotated[str | None, typer.Argument(help="one prompt; without it, an interactive chat")] = None,
    system: Annotated[str | None, typer.Option("--system", help="system prompt")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (0 = greedy)")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="stop after this many tokens")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx-size", help="context length (default: automatic)")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    format: Annotated[str | None, typer.Option("--format", help='"json": answer with one JSON object')] = None,
    schema: Annotated[
        Path | None, typer.Option("--schema", help="a JSON schema file the answer must validate against")
    ] = None,
) -> None:
    """Chat with a model in the terminal (no server needed; pulls the model if missing)."""
    from lokal.cli.chat import ChatSession, interactive, json_output
    from lokal.options import OptionError, from_openai
    from lokal.runtime.runtime import Runtime

    try:
        output = json_output(format, schema)
        options = from_openai({"temperature": temperature, "max_tokens": max_tokens, "seed": seed})
    except (ValueError, OptionError) as exc:
        raise UserError(str(exc).replace("max_tokens:", "--max-tokens:")) from exc
    settings = _settings(ctx_size=ctx_size, threads=threads, parallel=1, prefix_cache=True)
    _ensure_pulled(settings, model)
    session = ChatSession(Runtime(settings), model, options, output)
    try:
        session.load()
        if prompt is None and not sys.stdin.isatty():
            prompt = sys.stdin.read()
        if prompt is not None:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            if session.answer(messages, console) is None:
                raise typer.Exit(130)
        else:
            interactive(session, console, system)
    finally:
        session.close()


@app.command()
@friendly
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 11435)")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="model to pull if missing and load at start")
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="sequences decoded together (slots); 0 = as many as memory allows, max 8 "
                                      "(--kv-pool shared: 128 with the KV cache on a GPU, else 32)")
    ] = None,
    ctx_size: Annotated[int | None, typer.Option(
        "--ctx-size", help="context length per slot; 0 (default) = automatic: the model's trained length within "
        "4096..16384 as memory allows, and a request's num_ctx may reload the model larger")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help="waiting requests before 503")] = None,
    no_preload: Annotated[bool, typer.Option("--no-preload", help="load models only on first request")] = False,
    keep_alive: Annotated[
        str | None,
        typer.Option("--keep-alive", help='idle time before a model unloads: "5m" (default), "1h30m", 0, -1 = never'),
    ] = None,
    prefix_cache_ram: Annotated[
        int | None,
        typer.Option(
            "--prefix-cache-ram", help="MiB of host memory for prefixes evicted from slots (default 512; 0 = off)"
        ),
    ] = None,
    speculate: Annotated[
        str | None,
        typer.Option("--speculate", help="speculative decoding (greedy and sampled requests): off (default) or ngram"),
    ] = None,
    draft: Annotated[
        str | None,
        typer.Option("--draft", help="a smaller model with the same vocabulary that drafts tokens for --model "
                                     "(speculative decoding; pulled if missing)"),
    ] = None,
    gpu_layers: Annotated[
        str | None,
        typer.Option("--gpu-layers", help="layers on NVIDIA GPUs: auto (default: as many as fit in free VRAM) or "
                                          "a number; 0 = CPU only"),
    ] = None,
    tensor_split: Annotated[
        str | None,
        typer.Option("--tensor-split", help="each GPU's share of the offloaded layers, e.g. 3,1 (default: by free "
                                            "memory)"),
    ] = None,
    main_gpu: Annotated[
        int | None, typer.Option("--main-gpu", help="the one GPU to use (without --tensor-split); default: all")
    ] = None,
    kv_pool: Annotated[
        str | None,
        typer.Option("--kv-pool", help="per-slot (default: each slot reserves its context) or shared (sequences "
                                       "take KV cells from one pool as they grow)"),
    ] = None,
    kv_cells: Annotated[
        int | None, typer.Option("--kv-cells", help="cells of the shared KV pool; 0 (default) = automatic")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS",
                     help="serve from replicas on Ray Serve, on the Ray cluster at ADDRESS (ray.init's: local = a "
                          "new one on this machine, auto, host:port, ray://host:port; docs/scale-out.md)"),
    ] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="with --ray: replicas, each a whole lokal")] = 1,
    autoscale: Annotated[
        str | None, typer.Option("--autoscale", metavar="MIN:MAX",
                                 help="with --ray: replicas scaled by Ray Serve on queued+running requests")
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API (and /docs) on one port."""

    from lokal.app import create_app
    from lokal.runtime.runtime import Runtime

    settings = _settings(
        host=host, port=port, parallel=parallel, ctx_size=ctx_size, threads=threads, max_queue=max_queue,
        default_model=model, keep_alive=keep_alive, prefix_cache_ram_mib=prefix_cache_ram,
        speculate=speculate, draft=draft, gpu_layers=gpu_layers, tensor_split=tensor_split, main_gpu=main_gpu,
        kv_pool=kv_pool, kv_cells=kv_cells,
    )
    if settings.draft:
        _ensure_pulled(settings, settings.draft)
    if not no_preload:
        _ensure_pulled(settings, settings.default_model)
    preload = [] if no_preload else [settings.default_model]
    if ray_address is not None or autoscale is not None or replicas != 1:
        try:
            from lokal.scale.serve import ScaleError, ray_runtime
        except ImportError as exc:
            raise UserError(f"--ray needs Ray Serve: pip install 'lokal[ray]' ({exc})") from None
        from lokal.scale.ingress import ingress_app

        try:
            remote = ray_runtime(settings, ray_address or "local", replicas, autoscale, preload)
        except ScaleError as exc:
            raise UserError(str(exc)) from None
        app_ = ingress_app(settings, remote)  # the replicas load preload
    else:
        app_ = create_app(settings, Runtime(settings), preload=preload)
    console.print(
        f"lokal {__version__} serving on [bold]http://{escape(settings.host)}:{settings.port}[/bold] "
        f"(slots={settings.parallel or 'auto'}, ctx={settings.ctx_size or 'auto'}, threads={settings.threads}, "
        f"gpu-layers={settings.gpu_layers}, kv-pool={settings.kv_pool})"
    )
    _warn_if_open(settings)
    # SIGTERM/SIGINT: stop accepting, let running requests finish for up to LOKAL_SHUTDOWN_GRACE;
    # a second signal exits at once
    from lokal.server.lifecycle import serve as serve_until_signalled

    serve_until_signalled(app_, settings)


def _warn_if_open(settings: Settings) -> None:
    """A loud warning when the API is reachable from other machines and no key protects it."""
    import ipaddress

    from lokal.server.security.keys import KeyStore

    host = settings.host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not KeyStore(settings.home).enabled():
        err_console.print(
            f"[bold red]WARNING: serving on {escape(settings.host)} with no API keys: anyone who can reach this "
            "port can use every model and route. Create a key with `lokal keys create NAME`.[/bold red]",
            highlight=False,
        )


from lokal.cli.bench_cmds import bench_app  # noqa: E402 - registered after the commands above

app.add_typer(bench_app, name="bench")


from lokal.cli.keys_cmds import keys_app  # noqa: E402  (after every command above)

app.add_typer(keys_app, name="keys")


from lokal.cli.advise_cmds import register as register_advise  # noqa: E402  (after every command above)

register_advise(app)  # lokal advise | cost | recommend


from lokal.cli.transcribe_cmd import register as register_transcribe  # noqa: E402  (after every command above)

register_transcribe(app, friendly)  # lokal transcribe FILE


from lokal.cli.workshop_cmds import register as register_workshop  # noqa: E402  (after every command above)

register_workshop(app, friendly)  # lokal quantize | eval


if __name__ == "__main__":
    app()
