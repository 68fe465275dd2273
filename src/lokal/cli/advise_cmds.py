"""`lokal advise | cost | recommend` and the pull command's fit warning: thin wrappers over
``lokal.advise``. ``register(app)`` adds them to the main Typer app."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lokal.config import Settings
from lokal.store.errors import StoreError

if TYPE_CHECKING:
    from lokal.advise.hardware import Hardware

# Piped or captured output keeps whole table rows (rich would cut them at 80 columns).
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)
F = TypeVar("F", bound=Callable[..., Any])
FIT_STYLE = {"fits": "green", "tight": "yellow", "wont_fit": "red"}
FIT_WORDS = {"fits": "fits", "tight": "tight", "wont_fit": "won't fit"}


def _one_line_errors(fn: F) -> F:
    """Estimate, price-table and bench-file errors as one red line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, StoreError) as exc:  # EstimateError, BenchFileError, PriceTableError: ValueError
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _say(text: str) -> None:
    """One line of output, markup but no highlighting; piped, it is not cut into 160 columns. Values
    put into ``text`` (names, paths, reasons) go through ``escape``: they are text, not markup."""
    console.print(text, highlight=False, soft_wrap=True)


def _gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB"


def _emit_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, allow_nan=False))


# ---- lokal advise ----------------------------------------------------------------------------
@_one_line_errors
def advise(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="a model (store, catalog, .gguf, URL, "
                                                     "hf.co/…, or a size like 7b:q4_k_m); repeatable")] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="context per slot to judge with")] = 4096,
    parallel: Annotated[int | None, typer.Option("--parallel", help="slots to judge with (default 1) and to "
                                                  "serve with (default: as many as fit, up to 8)")] = None,
    kv_type: Annotated[str, typer.Option("--kv-type", help="KV cache type: f16, q8_0, q4_0")] = "f16",
    target: Annotated[str | None, typer.Option("--target", help='e.g. "7b@8k x4": which quantization fits')] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (schema: lokal/advise/schemas/"
                                                        "advise.schema.json)")] = False,
) -> None:
    """What fits on this machine (fits / tight / won't fit), the largest context and slots, and
    settings for `lokal serve`."""
    from lokal.advise.advise import (
        MAX_PARALLEL,
        advise_target,
        candidate_shapes,
        fit_table,
        gpu_note,
        parse_target,
        serve_advice,
        serve_model,
    )
    from lokal.advise.hardware import detect_hardware
    from lokal.advise.memory import TIGHT_SHARE
    from lokal.advise.offload import gpu_offload_supported

    if parallel is not None and parallel < 1:
        raise ValueError(f"--parallel must be at least 1 (got {parallel})")
    parsed_target = parse_target(target) if target else None  # a typo fails before any work
    home = Settings().home
    hw = detect_hardware(home)
    shapes = candidate_shapes(home, model)
    slots = parallel
    parallel = parallel or 1
    can_offload = gpu_offload_supported()
    rows = fit_table(shapes, hw, ctx, parallel, kv_type, can_offload)
    chosen = serve_model(rows, shapes)
    # lokal serves an f16 KV cache
    serve = serve_advice(chosen, hw, ctx, slots=slots, can_offload=can_offload) if chosen is not None else None
    target_advice = advise_target(parsed_target, hw.ram_available) if parsed_target else None
    notes = [
        f"fits: under {TIGHT_SHARE:.0%} of the RAM available now; tight: up to 100%; won't fit: more",
        "OTHER: compute buffers and llama.cpp's overhead; MAX CTX at the asked slots and SLOTS at the asked ctx "
        f"fit in all the available RAM (SLOTS counted up to {MAX_PARALLEL}); * not in the store (sized from the "
        "catalog, a header or a generic model of that size)",
        gpu_note(hw, can_offload),
    ]
    if kv_type != "f16" or target:
        notes.append("lokal serves with an f16 KV cache today; q8_0/q4_0 are llama.cpp cache types it does not "
                     "expose yet, shown for planning")
    if as_json:
        doc: dict[str, Any] = {
            "schema": "lokal.advise/1", "kind": "advise", "hardware": hw.to_dict(), "ctx": ctx, "parallel": parallel,
            "kv_type": kv_type, "available_bytes": hw.ram_available, "models": [r.to_dict() for r in rows],
            "serve": None if serve is None else {"model": serve.model, "threads": serve.threads,
                                                 "parallel": serve.parallel, "ctx": serve.ctx,
                                                 "command": serve.command, "reasons": list(serve.reasons)},
            "target": None, "notes": notes,
        }
        if target_advice is not None:
            t = target_advice.target
            doc["target"] = {
                "text": t.text, "size_b": t.size_b, "ctx": t.ctx, "users": t.users, "reason": target_advice.reason,
                "best": None if target_advice.best is None else vars(target_advice.best),
                "options": [vars(o) for o in target_advice.options],
            }
        _emit_json(doc)
        return
    gpus = escape(", ".join(f"{g.name} {_gb(g.memory_free)} free of {_gb(g.memory_total)}" for g in hw.gpus)
                  or "none detected")
    _say(f"[bold]{escape(hw.cpu_model)}[/bold]: {hw.cores} cores ({hw.physical_cores or '?'} physical), "
                  f"SIMD {escape(' '.join(hw.simd) or 'none detected')}")
    _say(f"RAM {_gb(hw.ram_available)} available of {_gb(hw.ram_total)}; disk free under {escape(str(home))}: "
                  f"{_gb(hw.disk_free) if hw.disk_free is not None else '?'}; GPUs: {gpus}")
    table = Table(box=None, header_style="bold", title=f"at ctx {ctx} x {parallel} slot(s), KV {escape(kv_type)}",
                  title_justify="left")
    columns = ["MODEL", "QUANT", "WEIGHTS", "KV", "OTHER", "TOTAL", "FIT", "MAX CTX", "SLOTS"]
    if hw.gpus:
        columns.insert(7, "GPU")
    for col in columns:
        table.add_column(col, justify="left" if col in ("MODEL", "QUANT", "FIT", "GPU") else "right", no_wrap=True)
    for r in rows:
        e = r.estimate
        style = FIT_STYLE[r.fit]
        cells = [escape(r.model + ("" if r.source == "store" else "*")), escape(r.quantization or "?"),
                 _gb(e.weights), _gb(e.kv_cache), _gb(e.compute + e.overhead), _gb(e.total),
                 f"[{style}]{FIT_WORDS[r.fit]}[/{style}]", str(r.max_ctx),
                 f"{r.max_parallel}+" if r.max_parallel >= MAX_PARALLEL else str(r.max_parallel)]
        if hw.gpus:
            cells.insert(7, escape(r.offload.description if r.offload is not None else ""))
        table.add_row(*cells)
    console.print(table)
    if serve is not None:
        _say(f"\n[bold]serve[/bold]: {escape(serve.command)}")
        for reason in serve.reasons:
            _say(f"  - {escape(reason)}")
    if target_advice is not None:
        t = target_advice.target
        _say(f"\n[bold]target[/bold] {t.size_b:g}B, {t.ctx} tokens x {t.users} user(s): "
                      f"{escape(target_advice.reason)}")
        opts = Table(box=None, header_style="bold")
        for col in ("QUANT", "KV F16", "FIT", "KV Q8_0", "FIT "):
            opts.add_column(col, justify="right" if col.startswith("KV") else "left", no_wrap=True)
        by_quant: dict[str, dict[str, Any]] = {}
        for o in target_advice.options:
            by_quant.setdefault(o.quantization, {})[o.kv_type] = o
        for quant, kinds in by_quant.items():
            cells = [escape(quant)]
            for kv in ("f16", "q8_0"):
                o = kinds[kv]
                style = FIT_STYLE[o.fit]
                cells += [_gb(o.needed_bytes), f"[{style}]{FIT_WORDS[o.fit]}[/{style}]"]
            opts.add_row(*cells)
        console.print(opts)
    for note in notes:
        _say(f"[dim]{note}[/dim]")


# ---- lokal cost ------------------------------------------------------------------------------
@_one_line_errors
def cost(
    bench: Annotated[Path | None, typer.Option("--bench", help="a lokal bench --json or serve_load.py --json file")]
    = None,
    tok_s: Annotated[float | None, typer.Option("--tok-s", help="throughput (output tok/s) if no --bench")] = None,
    bench_target: Annotated[str | None, typer.Option("--bench-target", help="which target of the bench file")] = None,
    hardware_price: Annotated[float, typer.Option("--hardware-price", help="what the machine cost")] = 1000.0,
    lifetime_years: Annotated[float, typer.Option("--lifetime-years", help="years until it is replaced")] = 3.0,
    watts: Annotated[float | None, typer.Option("--watts", help="draw while serving (default: measured, "
                                                                 "else assumed)")] = None,
    kwh_price: Annotated[float, typer.Option("--kwh-price", help="electricity price per kWh")] = 0.30,
    utilisation: Annotated[float, typer.Option("--utilisation", help="share of the time spent serving, 0-1")] = 0.25,
    input_per_output: Annotated[float | None, typer.Option("--input-per-output",
                                                           help="prompt tokens per output token for cloud prices "
                                                                "(default: from the bench, else 1)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (schema: lokal/advise/schemas/"
                                                        "cost.schema.json)")] = False,
) -> None:
    """Local cost per million tokens from measured throughput and power, against cloud APIs."""
    from lokal.advise.cost import (
        CostInputs,
        Power,
        Throughput,
        compute_cost,
        measure_power,
        read_bench_throughput,
        validate_inputs,
    )
    from lokal.advise.prices import load_prices

    if bench is not None:
        throughput = read_bench_throughput(bench, bench_target)
    elif tok_s is not None:
        throughput = Throughput(tok_s=tok_s, source="--tok-s (given)")
    else:
        raise ValueError("give measured throughput: --bench FILE.json (from lokal bench run --json) or --tok-s N")
    if input_per_output is not None:
        ratio, ratio_source = input_per_output, "given"
    elif throughput.input_per_output is not None:
        ratio, ratio_source = throughput.input_per_output, "from the bench"
    else:
        ratio, ratio_source = 1.0, "assumed"
    inputs = CostInputs(hardware_price=hardware_price, lifetime_years=lifetime_years, watts=watts or 0.0,
                        kwh_price=kwh_price, utilisation=utilisation, tok_s=throughput.tok_s, input_per_output=ratio)
    validate_inputs(inputs)  # before measuring power: a typo fails at once
    power = Power(watts, "given", f"{watts:g} W (--watts)") if watts is not None else measure_power()
    inputs = CostInputs(**{**vars(inputs), "watts": power.watts})
    prices = load_prices(Settings().home)
    result = compute_cost(inputs, prices)
    if as_json:
        _emit_json({
            "schema": "lokal.cost/1", "kind": "cost", "currency": prices.currency,
            "inputs": vars(inputs), "input_per_output_source": ratio_source,
            "throughput": {"tok_s": throughput.tok_s, "source": throughput.source, "model": throughput.model,
                           "concurrency": throughput.concurrency},
            "power": {"watts": power.watts, "method": power.method, "detail": power.detail},
            "prices": {"noted": prices.noted, "sources": list(prices.sources)},
            "result": result.to_dict(),
        })
        return
    cur = escape(prices.currency)  # from the user's prices.json, as are the APIs' names below
    model = f", {throughput.model}" if throughput.model else ""
    _say(f"throughput {throughput.tok_s:.1f} tok/s ({escape(throughput.source + model)})")
    _say(f"power {power.watts:.0f} W: {escape(power.detail)}")
    _say(f"{result.tokens_per_month / 1e6:.2f} M tokens a month at {utilisation:.0%} utilisation; "
                  f"hardware {hardware_price:g} over {lifetime_years:g} years = {result.hardware_per_month:.2f} "
                  f"+ energy {result.energy_per_month:.2f} (at {kwh_price:g}/kWh) = {result.local_per_month:.2f} "
                  f"{cur} a month")
    _say(f"[bold]local: {result.local_per_m:.3f} {cur} per million tokens[/bold] "
                  f"(electricity alone {result.energy_per_m:.3f})")
    _say(f"\ncloud APIs, list prices noted {escape(prices.noted)}; {ratio:g} prompt token(s) per output token "
                  f"({ratio_source})")
    table = Table(box=None, header_style="bold")
    for col in ("API", f"{cur}/M", "VS LOCAL", f"{cur}/MONTH", "BREAK-EVEN"):
        table.add_column(col, justify="left" if col == "API" else "right", no_wrap=True)
    for c in result.cloud:
        if c.break_even_months is None:
            months = "never"
        else:
            months = f"{c.break_even_months:.1f} months" + ("" if c.pays_back else " (> lifetime)")
        ratio_text = f"{c.per_m / result.local_per_m:.2f}x" if result.local_per_m > 0 else "-"
        table.add_row(escape(f"{c.provider} {c.model}"), f"{c.per_m:.3f}", ratio_text, f"{c.month:.2f}", months)
    console.print(table)
    _say("[dim]VS LOCAL: the API's price per million over local's; break-even: months until the hardware "
                  "price is paid back by not paying the API for the same tokens, less electricity; "
                  "edit prices in $LOKAL_HOME/prices.json[/dim]")


# ---- lokal recommend -------------------------------------------------------------------------
@_one_line_errors
def recommend(
    use_case: Annotated[str | None, typer.Option("--use-case", help="chat, code, agents, rag, batch")] = None,
    users: Annotated[int | None, typer.Option("--users", help="people or programs using it at the same time")]
    = None,
    private: Annotated[bool | None, typer.Option("--private/--cloud-ok", help="must data stay on this machine?")]
    = None,
    api: Annotated[str | None, typer.Option("--api", help="openai, ollama, both, none")] = None,
    lan: Annotated[bool | None, typer.Option("--lan/--local-only", help="reachable from other machines?")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="a model you want to use")] = None,
    bench: Annotated[Path | None, typer.Option("--bench", help="a bench JSON with measured throughput")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (schema: lokal/advise/schemas/"
                                                        "recommend.schema.json)")] = False,
) -> None:
    """A lokal configuration for your needs, with the reasoning (asks when run in a terminal)."""
    from lokal.advise.cost import read_bench_throughput
    from lokal.advise.hardware import detect_hardware
    from lokal.advise.offload import gpu_offload_supported
    from lokal.advise.recommend import APIS, USE_CASES, Needs
    from lokal.advise.recommend import recommend as recommend_for
    from lokal.runtime.sizing import MAX_AUTO_SLOTS

    ask = sys.stdin.isatty() and not as_json
    if use_case is None:
        use_case = typer.prompt(f"use case ({', '.join(USE_CASES)})", default="chat") if ask else "chat"
    if users is None:
        users = int(typer.prompt("users at the same time", default=1, type=int)) if ask else 1
    if private is None:
        private = typer.confirm("must prompts stay on this machine?", default=True) if ask else True
    if api is None:
        api = typer.prompt(f"API ({', '.join(APIS)})", default="openai") if ask else "openai"
    if lan is None:
        lan = typer.confirm("reachable from other machines?", default=False) if ask else False
    if users < 1:
        raise ValueError(f"--users must be at least 1 (got {users})")
    home = Settings().home
    hw = detect_hardware(home)
    throughput = read_bench_throughput(bench, concurrency=min(users, MAX_AUTO_SLOTS)) if bench is not None else None
    needs = Needs(use_case=use_case.strip().lower(), users=users, private=private, api=api.strip().lower(),
                  lan=lan, model=model)
    rec = recommend_for(needs, hw, home, throughput, can_offload=gpu_offload_supported())
    if as_json:
        _emit_json({"schema": "lokal.recommend/1", "kind": "recommend", "needs": vars(needs),
                    "hardware": hw.to_dict(), "recommendation": rec.to_dict()})
        return
    if rec.command:
        _say(f"[bold]{escape(rec.command)}[/bold]")
    for reason in rec.reasons:
        _say(f"  - {escape(reason)}")
    for warning in rec.warnings:
        _say(f"[yellow]  ! {escape(warning)}[/yellow]")


# ---- lokal pull's warning --------------------------------------------------------------------
def warn_if_wont_fit(name: str, settings: Settings, hardware: Hardware | None = None) -> None:
    """Before a pull: say so when the model will not fit in RAM (or is tight) at the configured
    context and slots, or not on the disk under the store. Never stops the pull, never fails it:
    an estimate that cannot be made says nothing. ``hardware`` is detected unless given (tests)."""
    from lokal.advise.advise import pull_warnings
    from lokal.advise.hardware import detect_hardware
    from lokal.advise.offload import gpu_offload_supported
    from lokal.runtime.sizing import AUTO_CTX_FLOOR

    try:
        hw = hardware or detect_hardware(settings.home)
        warnings = pull_warnings(name, settings.ctx_size or AUTO_CTX_FLOOR, max(1, settings.parallel), hw,
                                 settings.home, can_offload=gpu_offload_supported())
    except Exception:
        return
    for warning in warnings:
        err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add advise, cost and recommend to the main app."""
    app.command("advise")(advise)
    app.command("cost")(cost)
    app.command("recommend")(recommend)
