"""Speculative drafts: tokens a greedy sequence will probably produce next, fed with its next row in
the same llama_decode; the engine keeps the longest prefix its own greedy pick confirms
(docs/engine.md). Two sources: the sequence's own prompt and output (``PromptLookup``, no model) or
a smaller draft model with the same vocabulary (``draft.DraftModel``). Both learn whether drafting
pays the same way (``Acceptance``)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lokal.engine.sequence import Sequence

MAX_NGRAM = 3  # the longest suffix looked up
MIN_NGRAM = 2  # a single repeated token predicts too little to be worth a row
MAX_DRAFT = 8  # draft rows per sequence and step
# A step with k draft rows costs about 1 + SPEC_OVERHEAD + ROW_COST × k one-row steps (smollm2, 2 cores:
# 5.2 ms for 1 row, 10.4 for 2, 12.4 for 3, 17.0 for 5, 26.8 for 9: a single row takes a faster path).
SPEC_OVERHEAD = 0.5
ROW_COST = 0.45
MIN_GAIN = 1.05  # expected tokens per unit of step cost that a draft must promise


class Speculation(enum.StrEnum):
    OFF = "off"
    NGRAM = "ngram"
    DRAFT = "draft"  # a draft model (``--draft``, Modelfile ``PARAMETER draft``)


class Acceptance:
    """One sequence's running acceptance rate ``alpha`` (the chance that a draft token is accepted,
    given the one before it was) and the draft length ``k`` that pays at that rate (``best_k``).
    ``draft_cost``: what guessing one draft token costs, in one-row steps of the target (0 for a
    lookup; a draft model's decode for a model). When no k pays, a guess can still be made and kept
    aside (``shadow``); ``score_shadow`` scores it against the tokens that did follow, so alpha keeps
    learning without feeding rows."""

    def __init__(self, draft_cost: float = 0.0) -> None:
        self.draft_cost = draft_cost
        self.alpha = 0.5  # pessimistic: shadow drafts must show that drafting pays
        self.k = best_k(self.alpha, draft_cost)
        self._shadow: tuple[int, list[int]] | None = None  # (position, guess) not fed, to be scored

    @property
    def shadowing(self) -> bool:
        """A shadow guess waits to be scored."""
        return self._shadow is not None

    def shadow(self, at: int, guess: list[int]) -> None:
        """Keep a guess for the tokens from position ``at`` on, not fed, to be scored later."""
        if guess:
            self._shadow = (at, guess)

    def score_shadow(self, tokens: list[int]) -> None:
        """Score the shadow guess once ``tokens`` decide it (a miss seen, or the whole guess true)."""
        if self._shadow is None:
            return
        at, shadow = self._shadow
        actual = tokens[at:at + len(shadow)]
        m = 0
        while m < len(actual) and actual[m] == shadow[m]:
            m += 1
        if m < len(actual) or m == len(shadow):
            self._shadow = None
            self.update(len(shadow), m)

    def update(self, drafted: int, accepted: int) -> None:
        """What a draft (fed or shadow) achieved: the acceptance rate and k follow."""
        rate = accepted / (accepted + 1) if accepted < drafted else 1.0  # per-token acceptance seen
        self.alpha = 0.6 * self.alpha + 0.4 * rate
        self.k = best_k(self.alpha, self.draft_cost)


class PromptLookup(Acceptance):
    """One sequence's n-gram index over its tokens, drafting with an adaptive length (``Acceptance``).

    ``draft`` finds the longest suffix (``MAX_NGRAM`` down to ``MIN_NGRAM`` tokens) that occurred
    earlier and proposes the tokens that followed its latest earlier occurrence. When no k pays,
    nothing is fed: the guess becomes a shadow draft (free), so a plain chat, whose text does not
    repeat itself, costs no extra rows."""

    def __init__(self) -> None:
        super().__init__()
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> index just past its latest occurrence
        self._indexed = 0  # n-grams ending before this index are in _ends

    def draft(self, tokens: list[int], limit: int) -> list[int]:
        """Up to min(k, limit) tokens likely to follow ``tokens`` (none if nothing repeats or
        drafting does not pay now)."""
        n_tok = len(tokens)
        ends = self._ends
        for end in range(max(self._indexed, 1), n_tok):  # not the suffix itself: it ends at n_tok
            for n in range(MIN_NGRAM, MAX_NGRAM + 1):
                if end >= n:
                    ends[tuple(tokens[end - n:end])] = end
        self._indexed = max(self._indexed, n_tok)
        self.score_shadow(tokens)
        guess: list[int] = []
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if n_tok < n:
                continue
            found = ends.get(tuple(tokens[n_tok - n:]))
            if found is not None:
                guess = tokens[found:found + MAX_DRAFT]
                break
        k = min(self.k, limit)
        if k > 0:
            return guess[:k]
        if not self.shadowing:
            self.shadow(n_tok, guess)
        return []


class Drafter(Protocol):
    """Where speculating sequences' drafts come from (the scheduler asks once a step, for all)."""

    def new_state(self) -> Acceptance:
        """A sequence's own drafting state (``Sequence.lookup``)."""
        ...

    def propose(self, wants: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Drafts for (sequence, at most this many tokens) pairs, one list per pair."""
        ...


class LookupDrafter:
    """Prompt lookup: each sequence drafts from its own tokens (``PromptLookup``)."""

    def new_state(self) -> PromptLookup:
        return PromptLookup()

    def propose(self, wants: list[tuple[Sequence, int]]) -> list[list[int]]:
        out = []
        for seq, limit in wants:
            assert isinstance(seq.lookup, PromptLookup)
            out.append(seq.lookup.draft(seq.tokens, limit))
        return out


def best_k(alpha: float, draft_cost: float = 0.0) -> int:
    """The draft length with the most expected tokens per unit of step cost (0: none pays). A step
    with k drafts costs 1 + SPEC_OVERHEAD + (ROW_COST + draft_cost) × k one-row steps."""
    best, best_gain = 0, MIN_GAIN
    for k in range(1, MAX_DRAFT + 1):
        expected = k + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
        gain = expected / (1.0 + SPEC_OVERHEAD + (ROW_COST + draft_cost) * k)
        if gain > best_gain:
            best, best_gain = k, gain
    return best
