"""CellLedger: the shared pool's cells as the scheduler counts them (a copied prefix counts once)."""

from __future__ import annotations

from lokal.engine.cells import CellLedger


def test_rows_take_cells_and_cutting_frees_them() -> None:
    ledger = CellLedger(100, shared=True)
    for p in range(10):
        ledger.append(0, p)
    ledger.append(0, 9)  # the same position written again takes no new cell
    assert (ledger.used, ledger.free, ledger.held(0)) == (10, 90, 10)
    ledger.truncate(0, 4)
    assert (ledger.used, ledger.held(0)) == (4, 4)
    ledger.truncate(0, 0)
    assert ledger.used == 0


def test_a_shared_prefix_counts_once_and_lives_while_anyone_holds_it() -> None:
    ledger = CellLedger(100, shared=True)
    for p in range(20):
        ledger.append(0, p)
    ledger.copy_prefix(0, 1, 12)
    ledger.append(1, 12)
    assert (ledger.used, ledger.held(1)) == (21, 13)
    assert (ledger.exclusive(0), ledger.exclusive(1)) == (8, 1)
    ledger.truncate(0, 0)  # the source goes: its unshared tail is freed, the shared prefix stays
    assert (ledger.used, ledger.exclusive(1)) == (13, 13)


def test_per_slot_streams_copy_a_prefix_into_new_cells() -> None:
    ledger = CellLedger(100, shared=False)
    for p in range(10):
        ledger.append(0, p)
    ledger.copy_prefix(0, 1, 6)
    assert (ledger.used, ledger.exclusive(0), ledger.exclusive(1)) == (16, 10, 6)


def test_restored_state_fills_fresh_cells() -> None:
    ledger = CellLedger(50, shared=True)
    ledger.append(3, 0)
    ledger.fill(3, 30)
    assert (ledger.used, ledger.held(3)) == (30, 30)
