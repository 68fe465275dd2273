"""LoRA adapters in the scheduler: one adapter set per step, in turns; prefixes reused only by the
same adapters; a new sequence placed next to the busy slots of its own set."""

from pathlib import Path

from lokal.engine.host_prefixes import HostPrefixes
from lokal.engine.llama_model import LoraAdapter
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import Scheduler
from lokal.engine.sequence import Adapters, Sequence, SequenceStatus

A: Adapters = ((LoraAdapter(Path("a.gguf"), 1), 1.0),)
B: Adapters = ((LoraAdapter(Path("b.gguf"), 2), 1.0),)
A_HALF: Adapters = ((A[0][0], 0.5),)


def seq(prompt: list[int], adapters: Adapters = ()) -> Sequence:
    return Sequence(prompt=list(prompt), params=SamplingParams(), max_context=4096, adapters=adapters)


def decoding(s: Scheduler, adapters: Adapters) -> Sequence:
    q = seq([1, 2, 3], adapters)
    s.add(q)
    s.admit()
    q.n_past, q.status = 3, SequenceStatus.DECODING
    q.tokens.append(4)
    return q


def test_with_one_adapter_set_every_sequence_is_in_every_step() -> None:
    s = Scheduler(n_slots=4, token_budget=64, max_queue=8, prefix_cache=False)
    seqs = [decoding(s, A) for _ in range(3)]
    assert [q for q, _ in s.schedule()] == seqs
    assert s.turns == 0


def test_several_adapter_sets_take_turns_one_set_per_step() -> None:
    s = Scheduler(n_slots=6, token_budget=64, max_queue=8, prefix_cache=False)
    base, a, base2, b, a_half = (decoding(s, x) for x in ((), A, (), B, A_HALF))
    steps = [{q.id for q, _ in s.schedule()} for _ in range(8)]
    groups = [{base.id, base2.id}, {a.id}, {b.id}, {a_half.id}]  # a scale is part of the set
    assert sorted(steps[:4], key=min) == sorted(groups, key=min)  # each set once per round
    assert steps[4:] == steps[:4]
    prompt = seq([5] * 40, B)  # a prompt is read in its own set's turn too
    s.add(prompt)
    s.admit()
    rows = [s.schedule() for _ in range(4)]
    assert [len({q.adapters for q, _ in plan}) for plan in rows] == [1, 1, 1, 1]
    assert sum(n for plan in rows for q, n in plan if q is prompt) == 40


def test_a_cached_prefix_serves_only_the_adapters_it_was_computed_with() -> None:
    s = Scheduler(n_slots=2, token_budget=64, max_queue=8, prefix_cache=True)
    first = seq([1, 2, 3, 4, 5], A)
    s.add(first)
    s.admit()
    first.n_past = 5
    s.release(first)
    for adapters, reused in (((), 0), (A_HALF, 0), (B, 0), (A, 5)):
        q = seq([1, 2, 3, 4, 5, 6], adapters)
        assert s._place(q).n_reused == reused
    running = decoding(s, B)  # a running sequence's cells, likewise
    assert s._place(seq(running.tokens + [7], B)).source == running.slot
    assert s._place(seq(running.tokens + [7], ())).n_reused == 0


def test_a_host_entry_serves_only_the_adapters_it_was_computed_with() -> None:
    host = HostPrefixes(1 << 20)
    tokens = list(range(20))
    host.put(tokens, b"state", A)
    assert host.longest(tokens + [1], 30, A)[1] == 20
    assert host.longest(tokens + [1], 30, ())[1] == 0
    assert host.worth_saving(tokens, ()) and not host.worth_saving(tokens, A)


def test_a_new_sequence_goes_next_to_the_busy_slots_of_its_own_set() -> None:
    s = Scheduler(n_slots=5, token_budget=64, max_queue=8, prefix_cache=False)
    for slot, adapters in ((1, A), (3, B)):
        q = seq([1, 2, 3], adapters)
        q.slot, q.status = slot, SequenceStatus.DECODING
        s.running.append(q)
        s.free_slots.remove(slot)
    new = seq([1, 2], A)
    s.add(new)
    s.admit()
    # slot 2 would join every busy slot into one run, but A's rows are decoded without B's:
    # slot 0 keeps A's slots contiguous
    assert new.slot == 0
