"""The prefix cache's host-memory tier: what it keeps, what it drops, and what the scheduler takes from it."""

from lokal.engine.host_prefixes import HostPrefixes
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import Scheduler
from lokal.engine.sequence import Sequence


def seq(prompt):
    return Sequence(prompt=list(prompt), params=SamplingParams(), max_context=4096)


def test_longest_common_prefix_wins_and_is_capped_by_the_limit():
    h = HostPrefixes(1000, min_tokens=2)
    h.put([1, 2, 3, 4], b"a" * 10)
    h.put([1, 2, 9, 9, 9], b"b" * 10)
    key, n = h.longest([1, 2, 3, 4, 5], limit=10)
    assert n == 4 and h.take(key).state == b"a" * 10
    assert h.longest([1, 2, 3, 4, 5], limit=3)[1] == 3
    assert h.longest([7, 7], limit=10) == (None, 0)


def test_least_recently_used_entries_go_first_when_bytes_run_out():
    h = HostPrefixes(25, min_tokens=1)
    h.put([1], b"x" * 10)
    h.put([2], b"y" * 10)
    h.take(h.longest([1], 5)[0])  # [1] is now the most recently used
    h.put([3], b"z" * 10)  # 30 bytes > 25: the least recently used ([2]) goes
    assert h.longest([2], 5) == (None, 0)
    assert h.longest([1], 5)[1] == 1 and h.longest([3], 5)[1] == 1
    assert h.used_bytes == 20 and len(h) == 2
    h.put([4], b"w" * 26)  # larger than the whole tier: not kept, nothing else lost
    assert len(h) == 2 and h.used_bytes == 20


def test_a_longer_save_replaces_the_entries_it_covers_and_short_or_known_prefixes_are_not_saved():
    h = HostPrefixes(1000, min_tokens=3)
    h.put([1, 2, 3], b"a")
    h.put([1, 2, 3, 4, 5], b"bb")
    assert len(h) == 1 and h.used_bytes == 2
    assert not h.worth_saving([1, 2, 3, 4])  # already held, and more
    assert not h.worth_saving([8, 9])  # shorter than min_tokens
    assert h.worth_saving([1, 2, 3, 4, 5, 6])
    assert not HostPrefixes(0).worth_saving([1, 2, 3, 4, 5, 6])  # the tier is off


def test_scheduler_restores_from_the_host_tier_only_when_it_beats_every_slot():
    host = HostPrefixes(1000, min_tokens=1)
    s = Scheduler(n_slots=2, token_budget=64, max_queue=8, prefix_cache=True, host=host)
    a = seq([1, 2, 3, 4, 5])
    s.add(a)
    (adm_a,) = s.admit()
    a.n_past = 5
    s.release(a)  # slot keeps [1..5]
    host.put([6, 7, 8, 9, 10, 11], b"s")
    b = seq([6, 7, 8, 9, 10, 11, 12])
    s.add(b)
    (adm_b,) = s.admit()
    assert adm_b.stored is not None and adm_b.n_reused == 6 and adm_b.source is None
    c = seq([1, 2, 3, 4, 99])  # its slot's own cells beat the host tier's
    s.add(c)
    (adm_c,) = s.admit()
    assert adm_c.stored is None and adm_c.source == adm_a.slot and adm_c.n_reused == 4


def test_without_the_prefix_cache_the_host_tier_is_ignored():
    host = HostPrefixes(1000, min_tokens=1)
    host.put([1, 2, 3, 4], b"s")
    s = Scheduler(n_slots=1, token_budget=64, max_queue=8, prefix_cache=False, host=host)
    s.add(seq([1, 2, 3, 4, 5]))
    (adm,) = s.admit()
    assert adm.stored is None and adm.n_reused == 0
