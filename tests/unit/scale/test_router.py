"""Prefix-affine routing: the key a conversation keeps across turns, and the replica order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lokal.runtime.request import GenerateRequest
from lokal.scale.router import affinity_key, rank, serves


@dataclass(frozen=True)
class Replica:
    name: str
    load: int = 0
    models: tuple[str, ...] = ("m:1",)


def order(replicas: list[Replica], key: str, model: str = "m:1", slots: int = 2) -> list[list[str]]:
    ranks = rank(replicas, key=key, slots=slots, serves=lambda r: model in r.models, load=lambda r: r.load,
                 name=lambda r: r.name)
    return [[r.name for r in group] for group in ranks]


def conversation(system: str, user: str, *later: dict[str, str]) -> GenerateRequest:
    return GenerateRequest(model="m:1", messages=[{"role": "system", "content": system},
                                                  {"role": "user", "content": user}, *later])


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    first = conversation("Be brief.", "Name a colour.")
    second = conversation("Be brief.", "Name a colour.", {"role": "assistant", "content": "Blue."},
                          {"role": "user", "content": "Another?"})
    assert affinity_key(first) == affinity_key(second)


def test_other_conversations_models_and_prompts_have_other_keys() -> None:
    base = conversation("Be brief.", "Name a colour.")
    assert affinity_key(base) != affinity_key(conversation("Be brief.", "Name a fruit."))
    assert affinity_key(base) != affinity_key(GenerateRequest(model="other:1", messages=base.messages))
    assert affinity_key(GenerateRequest(model="m:1", prompt="abc")) != affinity_key(
        GenerateRequest(model="m:1", prompt="abd"))


def test_a_key_keeps_its_replica_when_another_goes_away() -> None:
    replicas = [Replica(f"r{i}") for i in range(4)]
    for key in (f"k{i}" for i in range(20)):
        chosen = order(replicas, key)[0][0]
        survivors = [r for r in replicas if r.name != chosen][:2] + [r for r in replicas if r.name == chosen]
        assert order(survivors, key)[0] == [chosen]


def test_keys_spread_over_the_replicas() -> None:
    replicas = [Replica("a"), Replica("b")]
    chosen = {order(replicas, f"conversation {i}")[0][0] for i in range(20)}
    assert chosen == {"a", "b"}


def test_only_replicas_serving_the_model_are_candidates_unless_none_does() -> None:
    replicas = [Replica("a", models=()), Replica("b"), Replica("c", models=("other:1",))]
    assert order(replicas, "k") == [["b"]]
    assert sorted(order(replicas, "k", model="new:1")[0] + order(replicas, "k", model="new:1")[1]) == ["a", "b", "c"]


def test_a_busy_preferred_replica_gives_way_to_the_least_loaded() -> None:
    idle = [Replica("a"), Replica("b"), Replica("c")]
    preferred = order(idle, "k")[0][0]
    loads = {preferred: 2, **{r.name: 1 for r in idle if r.name != preferred}}
    busy = [Replica(r.name, load=loads[r.name]) for r in idle]
    ranks = order(busy, "k", slots=2)
    assert ranks[-1] == [preferred] and preferred not in ranks[0]
    # every replica busy: it stays first (its cache is worth the wait)
    full = [Replica(r.name, load=2) for r in idle]
    assert order(full, "k", slots=2)[0] == [preferred]


def test_without_a_key_the_least_loaded_come_first() -> None:
    assert order([Replica("a", load=3), Replica("b", load=1)], "") == [["b", "a"]]



@dataclass
class Reported:
    """What the router sees of a replica: its last report (empty before the first)."""

    routing_stats: dict[str, Any]


def test_a_replica_serves_the_models_it_reported_and_counts_as_serving_before_its_first_report() -> None:
    from tests.unit.scale.test_status import status

    reported = Reported({"status": [status("m:1", running=0)], "pid": 1})
    assert serves(reported, "m:1") and not serves(reported, "other:1")  # type: ignore[arg-type]
    assert serves(Reported({}), "m:1")  # type: ignore[arg-type]
