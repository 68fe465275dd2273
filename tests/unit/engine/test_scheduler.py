"""Slot admission, chunked prefill under the token budget, and prefix reuse decisions."""

from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import Scheduler, common_prefix
from lokal.engine.sequence import Sequence, SequenceStatus


def seq(prompt):
    return Sequence(prompt=list(prompt), params=SamplingParams(), max_context=4096)


def test_fcfs_admission_up_to_the_number_of_slots():
    s = Scheduler(n_slots=2, token_budget=64, max_queue=8, prefix_cache=False)
    seqs = [seq([1, 2, 3]) for _ in range(3)]
    for q in seqs:
        s.add(q)
    admitted = s.admit()
    assert [a.seq for a in admitted] == seqs[:2]
    assert list(s.waiting) == seqs[2:]
    assert {a.slot for a in admitted} == {0, 1}


def test_long_prompt_is_prefilled_in_chunks_while_decoders_advance():
    s = Scheduler(n_slots=2, token_budget=16, max_queue=8, prefix_cache=False)
    decoding = seq([1, 2])
    s.add(decoding)
    s.admit()
    decoding.n_past = 2
    decoding.tokens.append(9)
    decoding.status = SequenceStatus.DECODING
    long = seq(range(100, 140))
    s.add(long)
    s.admit()
    plan = s.schedule()
    assert plan[0] == (decoding, 1)
    assert plan[1] == (long, 15)  # the rest of the budget, not the whole 40-token prompt


def test_prefix_reuse_prefers_the_free_slot_holding_the_longest_common_prefix():
    s = Scheduler(n_slots=2, token_budget=64, max_queue=8, prefix_cache=True)
    a = seq([1, 2, 3, 4, 5])
    s.add(a)
    (adm,) = s.admit()
    a.n_past = 5
    s.release(a)
    b = seq([1, 2, 3, 4, 9, 9])
    s.add(b)
    (adm_b,) = s.admit()
    assert adm_b.slot == adm.slot and adm_b.source == adm.slot and adm_b.n_reused == 4


def test_reuse_leaves_at_least_one_prompt_token_to_decode():
    s = Scheduler(n_slots=1, token_budget=64, max_queue=8, prefix_cache=True)
    a = seq([1, 2, 3])
    s.add(a)
    s.admit()
    a.n_past = 3
    s.release(a)
    again = seq([1, 2, 3])
    s.add(again)
    (adm,) = s.admit()
    assert adm.n_reused == 2


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0


def _running(s, slot, prompt):
    q = seq(prompt)
    q.slot, q.status, q.n_past = slot, SequenceStatus.DECODING, len(q.prompt)
    q.tokens.append(7)
    s.free_slots.remove(slot)
    s.running.append(q)
    return q


def test_rows_come_in_slot_order_whatever_the_arrival_order():
    # llama.cpp puts only ascending, consecutive KV streams into one micro-batch
    s = Scheduler(n_slots=4, token_budget=64, max_queue=8, prefix_cache=False)
    late, early, mid = _running(s, 3, [1]), _running(s, 0, [2]), _running(s, 1, [3])
    prefill = seq([5, 6, 7])
    s.add(prefill)
    (adm,) = s.admit()
    assert adm.slot == 2  # the one free slot
    assert [q.slot for q, _ in s.schedule()] == [0, 1, 2, 3]
    assert [q for q, _ in s.schedule()] == [early, mid, prefill, late]


def test_a_new_sequence_takes_the_free_slot_that_keeps_busy_slots_contiguous():
    s = Scheduler(n_slots=6, token_budget=64, max_queue=8, prefix_cache=True)
    _running(s, 0, [1])
    _running(s, 2, [2])
    # slot 4 was used longest ago (LRU would pick it); slot 1 joins 0 and 2 into one run
    s.slot_used_at = [0.0, 5.0, 0.0, 3.0, 1.0, 2.0]
    s.add(seq([9, 9]))
    (adm,) = s.admit()
    assert adm.slot == 1


def test_a_reusable_prefix_still_beats_contiguity():
    s = Scheduler(n_slots=4, token_budget=64, max_queue=8, prefix_cache=True)
    _running(s, 0, [1])
    s.slot_cache[3] = [4, 5, 6, 7]
    s.add(seq([4, 5, 6, 8]))
    (adm,) = s.admit()
    assert adm.slot == 3 and adm.source == 3 and adm.n_reused == 3


def test_siblings_wait_for_their_leaders_prompt_then_copy_its_cells_without_blocking_others():
    s = Scheduler(n_slots=4, token_budget=64, max_queue=8, prefix_cache=False)
    prompt = list(range(10, 30))
    leader = seq(prompt)
    siblings = [Sequence(prompt=list(prompt), params=SamplingParams(), max_context=4096, leader=leader)
                for _ in range(2)]
    other = seq([7, 8, 9])
    for q in [leader, *siblings, other]:
        s.add(q)
    first = s.admit()
    assert [a.seq for a in first] == [leader, other]  # the siblings are held, the later request is not
    assert list(s.waiting) == siblings
    assert s.admit() == []  # the leader is still reading its prompt
    leader.n_past = len(prompt)
    leader.tokens.append(99)
    leader.status = SequenceStatus.DECODING
    second = s.admit()
    assert [a.seq for a in second] == siblings
    assert all(a.source == leader.slot and a.n_reused == len(prompt) - 1 for a in second)
    assert not s.waiting


def test_a_shared_pool_admits_by_free_cells_and_the_head_of_the_queue_waits():
    from lokal.engine.cells import CellLedger

    pool = CellLedger(200, shared=True)
    s = Scheduler(n_slots=8, token_budget=64, max_queue=8, prefix_cache=False, pool=pool)
    first, big, small = seq(range(100)), seq(range(120)), seq(range(10))
    for q in (first, big, small):
        s.add(q)
    assert [a.seq for a in s.admit()] == [first]  # 100 promised + 120 + the 1 % reserve > 200
    assert list(s.waiting) == [big, small]  # first come, first served: small does not overtake
    for p in range(100):
        pool.append(first.slot, p)
    first.n_past = 100
    s.release(first)
    assert [a.seq for a in s.admit()] == [big, small]  # a free slot's cached cells count as free


def test_a_preempted_sequence_goes_back_to_the_head_of_the_queue():
    from lokal.engine.cells import CellLedger

    s = Scheduler(n_slots=2, token_budget=64, max_queue=8, prefix_cache=True, pool=CellLedger(500, shared=True),
                  reuse_generated=False)
    old, new, later = seq([1, 2, 3]), seq([4, 5, 6]), seq([7])
    for q in (old, new):
        s.add(q)
    s.admit()
    assert s.newest() is new
    new.n_past = 3
    new.tokens += [8, 9]  # two generated tokens
    new.status = SequenceStatus.DECODING
    s.add(later)
    s.preempt(new)
    assert list(s.waiting) == [new, later] and new.resumed and new.slot is None and new.n_past == 0
    (adm,) = s.admit()
    assert adm.seq is new
    plan = s.schedule()
    assert (new, 3) in plan  # the prompt alone first: generated tokens are read in a later decode
