"""The memory estimate against a real load: the RSS a process gains loading each bundled model
and filling one slot's context, within ±15 % of the estimate (docs/memory-estimate.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lokal.advise.memory import fit_for
from tests.integration.advise.conftest import blob_path

PROBE = Path(__file__).with_name("rss_probe.py")
TOLERANCE = 0.15


@pytest.mark.slow
@pytest.mark.parametrize("ctx", [256, 1024])
@pytest.mark.parametrize("model", ["smollm2:135m", "gemma3:270m"])
def test_estimate_is_within_15_percent_of_measured_rss(bundled_home: Path, model: str, ctx: int) -> None:
    path = blob_path(bundled_home, model)
    # A fresh process per case: RSS before is the interpreter with llama.cpp loaded, nothing else.
    out = subprocess.run([sys.executable, str(PROBE), str(path), str(ctx)], capture_output=True, text=True,
                         timeout=300, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    measured = probe["rss_filled"] - probe["rss_before"]
    estimate = fit_for(model, ctx, 10**12, home=bundled_home).estimate
    assert estimate.model == model and estimate.weights == sum_tensor_bytes(path)
    error = estimate.total / measured - 1
    print(f"{model} ctx {ctx}: estimate {estimate.total / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB, "
          f"error {error:+.1%}")
    assert abs(error) <= TOLERANCE, (
        f"{model} at ctx {ctx}: estimated {estimate.total} bytes, measured {measured} ({error:+.1%})"
    )


def sum_tensor_bytes(path: Path) -> int:
    from lokal.store.gguf_header import read_gguf_header

    return sum(t.n_bytes for t in read_gguf_header(path).tensors)
