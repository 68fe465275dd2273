"""`lokal bench run | compare | scenarios`: the comparison tables, measured on this machine against any peer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lokal.bench.loadgen import RequestRecord
from lokal.bench.run import BenchEvents

bench_app = typer.Typer(
    name="bench", help="Benchmark lokal and its peers on this machine (TTFT, tok/s, memory, concurrency).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


class ProgressEvents(BenchEvents):
    """A Rich progress bar over every request of the run; failures and notes printed above it."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=total)

    def failure(self, line: str) -> None:
        self.progress.console.print(f"[red]✗[/red] {escape(line)}", highlight=False, soft_wrap=True)

    def note(self, line: str) -> None:
        self.progress.console.print(f"[dim]{escape(line)}[/dim]", highlight=False)

    def measuring(self, target: str, concurrency: int, rep: int, requests: int) -> None:
        what = f"c={concurrency} rep {rep + 1}" if concurrency else "prefix check"
        self.progress.update(self.task, description=f"{escape(target)} · {what}")

    def record(self, rec: RequestRecord) -> None:
        self.progress.advance(self.task)

    def measured(self, target: str, concurrency: int, summary: dict[str, Any]) -> None:
        err = f", [red]{summary['errors']} errors[/red]" if summary["errors"] else ""
        self.progress.console.print(f"  {escape(target)} c={concurrency}: {summary['tok_s']:.1f} tok/s, "
                                    f"{summary['req_s']:.2f} req/s{err}", highlight=False)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("concurrency levels must be ≥ 1")
    return values


@bench_app.command("run")
def run(
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t",
        help="lokal[:MODEL] (started here), llama-server:PATH, llama-cpp-python, or NAME=URL@MODEL "
             "(OpenAI API; NAME ollama… or URL ollama+http://… for Ollama's /api/chat). Repeat for several.",
    )] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="model for targets started here")] = None,
    scenario: Annotated[str, typer.Option(
        help="single | sweep | long-prompt | shared-prefix | all (load), or code-edit | summarize | chat "
             "(one user's workload on built-in texts; see `lokal bench scenarios`)")] = "sweep",
    concurrency: Annotated[str | None, typer.Option(help="levels, e.g. 1,10,100 (default: the scenario's)")] = None,
    rounds: Annotated[int | None, typer.Option(help="requests per client at each level")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        help="completion tokens per request (default 64, EOS ignored where supported; code-edit 640, summarize 96, "
             "chat 128, ending at EOS)")] = None,
    reps: Annotated[int, typer.Option(help="measurements per target and level, interleaved; medians kept")] = 1,
    seed: Annotated[int, typer.Option(help="prompt order and sampling seed")] = 0,
    prompts: Annotated[Path | None, typer.Option(help="JSONL prompts (ShareGPT, messages or prompt)")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="prompt size of long-prompt")] = 1500,
    prefix_tokens: Annotated[int, typer.Option(help="system prompt size of shared-prefix / the prefix check")] = 1500,
    threads: Annotated[int | None, typer.Option(help="threads of targets started here (default LOKAL_THREADS)")] = None,
    slots: Annotated[int, typer.Option(help="parallel slots of targets started here")] = 8,
    ctx: Annotated[int, typer.Option(help="context per slot of targets started here")] = 4096,
    baseline: Annotated[str | None, typer.Option(help="system the ratios compare against (default: first)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results (schema: lokal/bench/schema.json)")]
    = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report with charts")]
    = None,
    charts: Annotated[Path | None, typer.Option(help="also write the charts as PNG files in this folder")] = None,
    logs: Annotated[Path | None, typer.Option(help="folder for the logs of servers started here")] = None,
) -> None:
    """Measure targets under a scenario; print the comparison tables."""
    from lokal.bench.report import render
    from lokal.bench.run import RunConfig, run_bench
    from lokal.bench.scenarios import load_jsonl, make_scenario
    from lokal.bench.targets import LocalOptions, TargetSpecError, parse_target
    from lokal.config import Settings

    specs = target or ["lokal"]
    settings = Settings()
    model_name = model or settings.default_model
    try:
        sc = make_scenario(scenario, _ints(concurrency) if concurrency else None, rounds, prompt_tokens, prefix_tokens)
        user_prompts = load_jsonl(prompts) if prompts else None
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    local = LocalOptions(model=model_name, home=settings.home, threads=threads or settings.threads, slots=slots,
                         ctx=ctx)
    if any(s.split(":", 1)[0] in ("llama-server", "llama-cpp-python") for s in specs):
        from lokal.store.model_store import ModelStore
        from lokal.store.pull import pull_model

        store = ModelStore(settings.home)
        try:
            if not store.exists(model_name):  # an imported (lokal create) model is not pulled
                pull_model(store, model_name)
            local.gguf = store.gguf_path(model_name)
        except Exception as exc:  # noqa: BLE001 - any store failure is one line for the user
            raise _fail(f"model {model_name}: {exc}") from None
    try:
        targets = [parse_target(s, local) for s in specs]
    except TargetSpecError as exc:
        raise _fail(str(exc)) from None
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise _fail(f"two targets share a name: {names}; name URL targets NAME=URL@MODEL")
    if baseline and baseline not in names:
        raise _fail(f"--baseline {baseline!r} is not one of the targets: {', '.join(names)}")
    if max_tokens is not None and max_tokens < 1:
        raise _fail("--max-tokens must be ≥ 1")
    cfg = RunConfig(
        scenario=sc, max_tokens=max_tokens or sc.max_tokens or 64, reps=reps, seed=seed, user_prompts=user_prompts,
        prompts_source=str(prompts) if prompts else "builtin", prefix_tokens=prefix_tokens, baseline=baseline,
        logs=logs, meta={"model": model_name, "threads": local.threads, "slots": slots, "ctx": ctx},
    )
    total = sum(c * sc.rounds_at(c) for c in sc.concurrency) * reps * len(targets)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        doc = run_bench(targets, cfg, ProgressEvents(progress, total))
    render(doc, console)
    if json_out:
        json_out.write_text(json.dumps(doc, indent=2))
        console.print(f"[dim]results: {escape(str(json_out))}[/dim]")
    if html_out or charts:
        from lokal.bench.html import write_html, write_pngs

        try:
            if html_out:
                write_html(doc, html_out)
                console.print(f"[dim]report: {escape(str(html_out))}[/dim]")
            if charts:
                for path in write_pngs(doc, charts):
                    console.print(f"[dim]chart: {escape(str(path))}[/dim]")
        except RuntimeError as exc:
            raise _fail(str(exc)) from None
    if doc["interrupted"]:
        raise typer.Exit(130)
    if all(t["status"] == "failed" for t in doc["targets"]):
        raise typer.Exit(1)


@bench_app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="earlier run (--json output)")],
    b: Annotated[Path, typer.Argument(help="later run")],
) -> None:
    """Two earlier runs side by side: tok/s, TTFT p50 and errors per system and concurrency, with changes."""
    from lokal.bench.compare import compare_table, load

    try:
        doc_a, doc_b = load(a), load(b)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(compare_table(doc_a, doc_b, a.name, b.name))


@bench_app.command("scenarios")
def scenarios() -> None:
    """List the named scenarios."""
    from lokal.bench.scenarios import SCENARIOS

    for name, text in SCENARIOS.items():
        console.print(f"[bold]{name:<14}[/bold] {text}", highlight=False)


@bench_app.command("quant")
def quant(
    model: Annotated[str, typer.Argument(help="a model in the store: the variants are made from it")],
    types: Annotated[str | None, typer.Option(
        help="types to build and measure, e.g. Q8_0,Q4_K_M (default Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,Q2_K)")] = None,
    allow_requantize: Annotated[bool, typer.Option(
        "--allow-requantize", help="build the variants from an already quantized model (its error adds up)")] = False,
    reps: Annotated[int, typer.Option(help="repetitions of each speed test, going round the types (mean ± sd)")] = 3,
    ctx: Annotated[int, typer.Option(help="perplexity: tokens per chunk")] = 512,
    chunks: Annotated[int | None, typer.Option(help="perplexity: only the first N chunks of the text")] = None,
    threads: Annotated[int | None, typer.Option(help="threads (default LOKAL_THREADS)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="print the table as Markdown")] = False,
) -> None:
    """The quantization table: each type's size, memory, prompt and generation speed (llama-bench's pp512 and
    tg128) and perplexity, one row per type; the variants are built once and kept in the store."""
    from rich.table import Table

    from lokal.cli.workshop_cmds import TensorBar, tensor_progress, warn
    from lokal.config import Settings
    from lokal.store.errors import StoreError
    from lokal.store.kinds import GENERATING_KINDS
    from lokal.store.model_store import ModelStore
    from lokal.workshop.perplexity import PerplexityError
    from lokal.workshop.quant_table import (
        QuantRow,
        build_variants,
        markdown_table,
        measure_row,
        measure_speeds,
        parse_types,
        table_document,
    )

    settings = Settings()
    store = ModelStore(settings.home)
    n_threads = threads or settings.threads
    if reps < 1:
        raise _fail("--reps must be ≥ 1")
    try:
        wanted = parse_types(types)
        source = store.get(model)
        if source.kind not in GENERATING_KINDS:
            raise _fail(f"{source.name} is of kind {source.kind}: the table's speeds and perplexity need a model that "
                        "generates text")
        if allow_requantize and (source.facts.quantization or "").upper() not in ("F32", "F16", "BF16"):
            warn(f"{source.name} is {source.facts.quantization}: every variant is requantized from it, so each "
                 "row's error adds to that of the source (a table from the F16 original shows less loss)")
        with tensor_progress() as progress:
            variants = build_variants(store, source.name, wanted, allow_requantize=allow_requantize,
                                      threads=n_threads, progress=TensorBar(progress))
    except StoreError as exc:
        raise _fail(str(exc)) from None
    rows: list[QuantRow] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        runs = progress.add_task("speed: pp512 and tg128, each type in turn", total=reps * len(variants))
        try:
            speeds = measure_speeds([store.gguf_path(m.name) for m, _ in variants], n_threads, reps,
                                    on_run=lambda: progress.advance(runs))
        except StoreError as exc:
            raise _fail(str(exc)) from None
        progress.remove_task(runs)
        for (manifest, is_source), speed in zip(variants, speeds, strict=True):
            task = progress.add_task(f"{escape(manifest.name)} · perplexity chunks", total=None)

            def on_chunk(done: int, total: int, task: TaskID = task) -> None:
                progress.update(task, completed=done, total=total)

            try:
                r = measure_row(store, manifest, speed, source=is_source, threads=n_threads, ctx=ctx, chunks=chunks,
                                on_chunk=on_chunk)
            except (StoreError, PerplexityError) as exc:
                raise _fail(f"{manifest.name}: {exc}") from None
            rows.append(r)
            progress.remove_task(task)
            progress.console.print(f"  {escape(r.type)}: pp512 {r.prompt} t/s, tg128 {r.generation} t/s, "
                                   f"PPL {r.ppl:.4f} ± {r.ppl_stderr:.4f}", highlight=False)
    rows.sort(key=lambda r: -r.bits_per_weight)
    if markdown:
        console.out(markdown_table(rows), highlight=False)
    else:
        table = Table(title=f"{escape(source.name)} · {n_threads} threads", header_style="bold")
        for col in ("type", "bits/weight", "size", "memory @ 4k ctx", "pp512 t/s", "tg128 t/s", "perplexity"):
            table.add_column(col, justify="left" if col == "type" else "right")
        for r in rows:
            table.add_row(f"{r.type} (source)" if r.source else r.type, f"{r.bits_per_weight:.2f}",
                          f"{r.size_bytes / 2**20:.1f} MiB", f"{r.memory_bytes / 2**20:.0f} MiB", str(r.prompt),
                          str(r.generation), f"{r.ppl:.4f} ± {r.ppl_stderr:.4f}")
        console.print(table)
    if json_out:
        doc = table_document(source.name, rows, {"threads": n_threads, "reps": reps,
                                                 "requantized": allow_requantize})
        json_out.write_text(json.dumps(doc, indent=2))
        console.print(f"[dim]results: {escape(str(json_out))}[/dim]")
