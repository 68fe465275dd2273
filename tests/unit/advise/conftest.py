"""Simulated machines for the advise tests: hardware facts injected, nothing detected."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lokal.advise.hardware import Hardware

GIB = 1024**3


def machine(ram_gib: float = 1.0, cores: int = 2, disk_gib: float | None = 100.0) -> Hardware:
    """A CPU-only machine with ``ram_gib`` of RAM, all of it available."""
    ram = int(ram_gib * GIB)
    return Hardware(cpu_model="Simulated CPU", cores=cores, physical_cores=cores, simd=("avx2",), ram_total=ram,
                    ram_available=ram, disk_free=None if disk_gib is None else int(disk_gib * GIB),
                    system="Linux x86_64")


@pytest.fixture
def make_machine() -> Callable[..., Hardware]:
    """Factory: ``make_machine(ram_gib=1, cores=2, disk_gib=100)``."""
    return machine


@pytest.fixture(autouse=True)
def no_flash_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-computed sizes here include the attention-score buffer that llama.cpp holds
    without flash attention; whether this install's build runs flash attention is a machine fact
    like the others, so it is fixed rather than detected."""
    monkeypatch.setattr("lokal.advise.memory._flash_attention", lambda: False)
