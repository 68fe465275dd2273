"""The prefix cache's host-memory tier on the real model: a conversation whose slot was taken by
another comes back without reading its earlier turns again, and answers exactly as with no cache."""

from __future__ import annotations

import pytest

from lokal.config import Settings
from lokal.engine.sampling import SamplingParams
from lokal.llm import LLM

GREEDY = SamplingParams(temperature=0, max_tokens=24)
LIBRARIAN = "You are a careful librarian who answers in one short sentence. " * 15
PIRATE = "You are a cheerful pirate who answers in one short sentence. " * 15


def conversation(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@pytest.mark.parametrize("model", ["smollm2:135m", "gemma3:270m"])  # gemma3: sliding-window layers too
def test_a_conversation_evicted_from_its_slot_comes_back_from_host_memory_unchanged(model_home, model):
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), model)  # once per machine
    first_turn = conversation(LIBRARIAN, "Name a famous library.")
    other = conversation(PIRATE, "Name a famous ship.")
    settings = dict(home=model_home, parallel=1, ctx_size=1024)
    with LLM(model, Settings(**settings, prefix_cache=True, prefix_cache_ram_mib=64)) as cached:
        first = cached.generate([first_turn], GREEDY)[0]
        cached.generate([other], GREEDY)  # takes the only slot: the first conversation goes to host memory
        assert cached.engine.stats().host_prefixes == 1
        second_turn = [*first_turn, {"role": "assistant", "content": first.text},
                       {"role": "user", "content": "And another one?"}]
        second = cached.generate([second_turn], GREEDY)[0]
        again = cached.generate([other], GREEDY)[0]  # the pirate went to host memory in turn
        stats = cached.engine.stats()
    with LLM(model, Settings(**settings, prefix_cache=False)) as plain:
        expected = plain.generate([second_turn, other], GREEDY)
    # the system prompt and the first question were not read again (the first answer's cells were
    # computed in decode mode: they are read again as a prompt, as a cold request reads them)
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1  # all but the token decoded for logits
    assert [second.text, again.text] == [g.text for g in expected]
    assert stats.host_prefixes >= 1 and stats.host_prefix_bytes > 0


def test_with_the_host_tier_off_an_evicted_conversation_is_read_again(model_home):
    first_turn = conversation(LIBRARIAN, "Name a famous library.")
    s = Settings(home=model_home, parallel=1, ctx_size=1024, prefix_cache=True, prefix_cache_ram_mib=0)
    with LLM("smollm2:135m", s) as llm:
        llm.generate([first_turn], GREEDY)
        llm.generate([conversation(PIRATE, "Name a famous ship.")], GREEDY)
        back = llm.generate([conversation(LIBRARIAN, "Name a famous museum.")], GREEDY)[0]
        assert llm.engine.stats().host_prefixes == 0
    assert back.usage.cached_tokens < 40  # only the template's opening, shared with the pirate
