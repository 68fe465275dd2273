"""Local cost per million tokens, from measured throughput and power, against cloud API prices.

Arithmetic (docs/memory-estimate.md has a worked example):

- tokens a month = throughput (output tok/s) x utilisation x seconds in a month (365.25/12 days)
- hardware a month = hardware price / (lifetime years x 12)
- energy a month = watts / 1000 x hours in a month x utilisation x price of a kWh (power counted
  while serving; idle draw is the machine's anyway)
- local per million = (hardware + energy a month) / (tokens a month / 1e6)
- cloud per million output tokens = output price + input tokens per output token x input price
- break-even months = hardware price / (cloud a month - energy a month), for the same tokens;
  none when the cloud is cheaper than the electricity alone.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lokal.advise.prices import PriceTable

HOURS_PER_MONTH = 365.25 * 24 / 12  # 730.5
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
ASSUMED_CPU_WATTS = 65.0  # a desktop CPU package under inference load, when nothing can be measured


class BenchFileError(ValueError):
    """The bench JSON has no throughput lokal can read."""


@dataclass(frozen=True)
class Throughput:
    """Measured output tokens per second, and where the number came from."""

    tok_s: float
    source: str  # "bench.json: target lokal, c=10"
    input_per_output: float | None = None  # prompt tokens per completion token in that run
    concurrency: int | None = None  # requests in flight when it was measured
    model: str | None = None  # the model the bench ran


@dataclass(frozen=True)
class Power:
    """Watts drawn while serving, measured or assumed (``method`` says which)."""

    watts: float
    method: str  # "rapl", "nvml", "given", "assumed"
    detail: str


@dataclass(frozen=True)
class CostInputs:
    """Everything the arithmetic uses, in the price table's currency."""

    hardware_price: float
    lifetime_years: float
    watts: float
    kwh_price: float
    utilisation: float
    tok_s: float
    input_per_output: float = 1.0


@dataclass(frozen=True)
class CloudComparison:
    id: str
    provider: str
    model: str
    per_m: float  # per million output tokens, prompts included
    month: float  # the same monthly tokens through this API
    break_even_months: float | None  # None: the API costs less than the electricity alone
    pays_back: bool  # break-even within the hardware's lifetime


@dataclass(frozen=True)
class CostResult:
    tokens_per_month: float
    hardware_per_month: float
    energy_per_month: float
    local_per_month: float
    local_per_m: float
    energy_per_m: float
    cloud: tuple[CloudComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cloud"] = [asdict(c) for c in self.cloud]
        return data


INPUT_NAMES = {  # CostInputs' fields as a user knows them (the CLI's options)
    "hardware_price": "hardware price", "lifetime_years": "lifetime (years)", "watts": "power (watts)",
    "kwh_price": "electricity price (per kWh)", "utilisation": "utilisation", "tok_s": "throughput (tok/s)",
    "input_per_output": "prompt tokens per output token",
}


def validate_inputs(inputs: CostInputs) -> None:
    """Refuse inputs the arithmetic cannot mean: negative prices or power, no throughput."""
    for name, value in vars(inputs).items():
        if not math.isfinite(value):
            raise ValueError(f"{INPUT_NAMES[name]} must be a finite number, not {value}")
    if inputs.tok_s <= 0:
        raise ValueError(f"throughput must be more than 0 output tokens per second (got {inputs.tok_s:g})")
    if not 0 < inputs.utilisation <= 1:
        raise ValueError(f"utilisation is a fraction of the time: more than 0, at most 1 (got {inputs.utilisation:g})")
    if inputs.lifetime_years <= 0:
        raise ValueError(f"lifetime must be more than 0 years (got {inputs.lifetime_years:g})")
    for name in ("hardware_price", "watts", "kwh_price", "input_per_output"):
        if getattr(inputs, name) < 0:
            raise ValueError(f"{INPUT_NAMES[name]} cannot be negative (got {getattr(inputs, name):g})")


def compute_cost(inputs: CostInputs, prices: PriceTable) -> CostResult:
    """The arithmetic above; every figure in the table's currency."""
    validate_inputs(inputs)
    tokens = inputs.tok_s * inputs.utilisation * SECONDS_PER_MONTH
    hardware = inputs.hardware_price / (inputs.lifetime_years * 12)
    energy = inputs.watts / 1000 * HOURS_PER_MONTH * inputs.utilisation * inputs.kwh_price
    local = hardware + energy
    energy_per_m = inputs.watts / 1000 * (1e6 / inputs.tok_s / 3600) * inputs.kwh_price
    cloud = []
    for api in prices.apis:
        per_m = api.per_m_output(inputs.input_per_output)
        month = per_m * tokens / 1e6
        saving = month - energy
        months = inputs.hardware_price / saving if saving > 0 else None
        cloud.append(CloudComparison(api.id, api.provider, api.model, per_m, month, months,
                                     months is not None and months <= inputs.lifetime_years * 12))
    return CostResult(tokens_per_month=tokens, hardware_per_month=hardware, energy_per_month=energy,
                      local_per_month=local, local_per_m=local / (tokens / 1e6), energy_per_m=energy_per_m,
                      cloud=tuple(sorted(cloud, key=lambda c: c.per_m)))


# ---- measured throughput ---------------------------------------------------------------------
def read_bench_throughput(path: Path, target: str | None = None, concurrency: int | None = None) -> Throughput:
    """Output tokens/s from a bench JSON: ``lokal bench --json`` (``targets[].levels[]`` with
    ``concurrency`` and ``tok_s``) or ``benchmarks/serve_load.py --json`` (``{target: {"c<N>":
    {"tok_s"}}}``). Picks ``target`` (default: one named lokal, else the fastest) at its best
    concurrency, or at the measured level nearest ``concurrency`` when one is asked for."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BenchFileError(f"{path}: cannot read the bench JSON: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise BenchFileError(f"{path}: not a text file ({e.reason})") from e
    except ValueError as e:
        raise BenchFileError(f"{path}: not JSON ({e})") from e
    levels = _levels(doc)
    if not levels:
        raise BenchFileError(f"{path}: no tok_s measurements (expected lokal bench or serve_load.py JSON)")
    names = sorted({name for name, _, _ in levels})
    if target is not None:
        wanted = [row for row in levels if row[0] == target]
        if not wanted:
            raise BenchFileError(f"{path}: no target {target!r} (has {', '.join(names)})")
    else:
        lokal = [row for row in levels if row[0].lower().startswith("lokal")]
        wanted = lokal or levels
    if concurrency is not None and any(row[1] is not None for row in wanted):
        leveled = [row for row in wanted if row[1] is not None]
        name, level, tok_s = min(leveled, key=lambda row: (abs((row[1] or 0) - concurrency), -row[2]))
    else:
        name, level, tok_s = max(wanted, key=lambda row: row[2])
    ratio = None
    config = doc.get("config") if isinstance(doc, dict) else None
    if isinstance(config, dict) and _positive(config.get("prompt_tokens")) and _positive(config.get("max_tokens")):
        ratio = float(config["prompt_tokens"]) / float(config["max_tokens"])
    where = f"c={level}" if level is not None else "best level"
    return Throughput(tok_s=tok_s, source=f"{Path(path).name}: target {name}, {where}", input_per_output=ratio,
                      concurrency=level, model=_bench_model(doc, name))


def _levels(doc: Any) -> list[tuple[str, int | None, float]]:
    """(target, concurrency, tok_s) rows of either format."""
    rows: list[tuple[str, int | None, float]] = []
    if isinstance(doc, dict) and isinstance(doc.get("targets"), list):  # lokal bench
        for target in doc["targets"]:
            if not isinstance(target, dict) or target.get("status") == "failed":
                continue
            levels = target.get("levels")
            for level in levels if isinstance(levels, list) else []:
                tok_s = _rate(level.get("tok_s")) if isinstance(level, dict) else None
                if tok_s is not None:
                    rows.append((str(target.get("name", "?")), _int_or_none(level.get("concurrency")), tok_s))
        return rows
    if isinstance(doc, dict):  # serve_load.py: {target: {"c10": {...}, "prefix": ..., "rss_mib": ...}}
        for name, entry in doc.items():
            if not isinstance(entry, dict):
                continue
            for key, level in entry.items():
                if key.startswith("c") and key[1:].isdigit() and isinstance(level, dict):
                    tok_s = _rate(level.get("tok_s"))
                    if tok_s is not None:
                        rows.append((str(name), int(key[1:]), tok_s))
    return rows


def _bench_model(doc: Any, target: str) -> str | None:
    """The model a lokal bench target ran (its own, else the run's); None for serve_load.py files."""
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), list):
        return None
    for entry in doc["targets"]:
        if isinstance(entry, dict) and str(entry.get("name")) == target and isinstance(entry.get("model"), str):
            return str(entry["model"])
    config = doc.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, str) else None


def _rate(value: Any) -> float | None:
    """A measured tok/s: a finite number above 0, else None."""
    return float(value) if _positive(value) and math.isfinite(value) else None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---- power -----------------------------------------------------------------------------------
def measure_power(seconds: float = 1.0, powercap: Path = Path("/sys/class/powercap")) -> Power:
    """Package power from RAPL counters over ``seconds`` plus NVIDIA GPUs' draw (NVML), where
    readable; otherwise an assumption that says so."""
    parts: list[str] = []
    watts = 0.0
    methods = []
    cpu = _rapl_watts(seconds, powercap)
    if cpu is not None:
        watts += cpu
        methods.append("rapl")
        parts.append(f"CPU packages {cpu:.1f} W (RAPL over {seconds:g} s, whatever is running now)")
    gpu = _nvml_watts()
    if gpu is not None:
        watts += gpu
        methods.append("nvml")
        parts.append(f"NVIDIA GPUs {gpu:.1f} W (NVML)")
    if not methods:
        return Power(ASSUMED_CPU_WATTS, "assumed",
                     f"assumed {ASSUMED_CPU_WATTS:.0f} W: no readable RAPL counters or NVIDIA GPU here; "
                     "pass --watts with a measured figure")
    return Power(watts, "+".join(methods), "; ".join(parts))


def _rapl_watts(seconds: float, powercap: Path) -> float | None:
    """Sum of top-level RAPL packages (intel-rapl:N, not their sub-zones), or None."""
    try:
        zones = sorted(p for p in powercap.glob("intel-rapl:*") if p.name.count(":") == 1)
    except OSError:
        return None
    files = [z / "energy_uj" for z in zones]
    try:
        first = [int(f.read_text()) for f in files]
    except (OSError, ValueError):
        return None  # not readable without root on recent kernels
    if not files:
        return None
    start = time.monotonic()
    time.sleep(seconds)
    try:
        second = [int(f.read_text()) for f in files]
    except (OSError, ValueError):
        return None
    elapsed = time.monotonic() - start
    total = 0
    for zone, a, b in zip(zones, first, second, strict=True):
        if b < a:  # the counter wrapped
            try:
                b += int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                return None
        total += b - a
    return total / 1e6 / elapsed


def _nvml_watts() -> float | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if not count:
            return None
        return sum(pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)) / 1000
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
