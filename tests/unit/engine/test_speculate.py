"""Prompt-lookup drafting: which tokens it proposes, and when drafting is worth a row."""

from __future__ import annotations

from lokal.engine.speculate import MAX_DRAFT, PromptLookup, best_k


def test_best_k_drafts_only_when_acceptance_pays_for_the_rows() -> None:
    assert best_k(0.5) == 0
    assert best_k(0.8) == 0
    assert 0 < best_k(0.9) <= best_k(0.95) <= best_k(1.0) == MAX_DRAFT


def test_proposes_what_followed_the_latest_earlier_occurrence_of_the_suffix() -> None:
    lookup = PromptLookup()
    lookup.alpha, lookup.k = 1.0, MAX_DRAFT
    tokens = [1, 2, 3, 4, 5, 6, 9, 2, 3]
    assert lookup.draft(tokens, limit=8) == [4, 5, 6, 9, 2, 3]
    assert lookup.draft(tokens, limit=2) == [4, 5]
    assert lookup.draft([7, 8, 9], limit=8) == []  # nothing repeats


def test_shadow_drafts_teach_it_to_draft_on_text_that_repeats() -> None:
    lookup = PromptLookup()
    pattern = [10, 11, 12, 13, 14, 15]
    tokens = pattern * 2
    fed = []
    for t in pattern * 6:  # the answer keeps repeating the pattern, one token a step
        fed.append(lookup.draft(tokens, limit=8))
        tokens.append(t)
    assert fed[0] == []  # pessimistic at first: only a shadow guess
    assert any(fed) and lookup.k > 0


def test_shadow_drafts_keep_it_quiet_on_text_that_does_not_repeat() -> None:
    lookup = PromptLookup()
    tokens = [1, 2, 3, 1, 2]
    fed = []
    for t in range(100, 160):  # the guess [3, ...] never comes true
        fed.append(lookup.draft(tokens, limit=8))
        tokens.append(t)
    assert not any(fed) and lookup.k == 0
