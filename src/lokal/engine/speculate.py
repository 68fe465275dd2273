"""Prompt-lookup drafts: tokens a greedy sequence will probably produce next, guessed from its own
prompt and output (no draft model). The engine feeds them with the sequence's next row in the same
llama_decode and keeps the longest prefix its own greedy pick confirms (docs/engine.md)."""

from __future__ import annotations

import enum

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


class PromptLookup:
    """One sequence's n-gram index over its tokens and its adaptive draft length.

    ``draft`` finds the longest suffix (``MAX_NGRAM`` down to ``MIN_NGRAM`` tokens) that occurred
    earlier and proposes the tokens that followed its latest earlier occurrence. How many: the
    sequence keeps a running acceptance rate ``alpha`` (the chance that a draft token is accepted,
    given the one before it was) and drafts the k that maximises the expected tokens per step,
    (1 - alpha^(k+1)) / (1 - alpha), over the step's cost, 1 + SPEC_OVERHEAD + ROW_COST × k. When no
    k pays, nothing is fed: the lookup still makes its guess and scores it against the tokens that
    actually follow (a shadow draft, free), so ``alpha`` keeps learning and a plain chat, whose
    text does not repeat itself, costs no extra rows."""

    def __init__(self) -> None:
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> index just past its latest occurrence
        self._indexed = 0  # n-grams ending before this index are in _ends
        self.alpha = 0.5  # pessimistic: shadow drafts must show that drafting pays
        self.k = best_k(self.alpha)
        self._shadow: tuple[int, list[int]] | None = None  # (position, guess) not fed, to be scored

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
        if self._shadow is not None:
            at, shadow = self._shadow
            actual = tokens[at:at + len(shadow)]
            m = 0
            while m < len(actual) and actual[m] == shadow[m]:
                m += 1
            if m < len(actual) or m == len(shadow):  # decided: a miss seen, or the whole guess came true
                self._shadow = None
                self.update(len(shadow), m)
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
        if guess and self._shadow is None:
            self._shadow = (n_tok, guess)
        return []

    def update(self, drafted: int, accepted: int) -> None:
        """What a draft (fed or shadow) achieved: the acceptance rate and k follow."""
        rate = accepted / (accepted + 1) if accepted < drafted else 1.0  # per-token acceptance seen
        self.alpha = 0.6 * self.alpha + 0.4 * rate
        self.k = best_k(self.alpha)


def best_k(alpha: float) -> int:
    """The draft length with the most expected tokens per unit of step cost (0: none pays)."""
    best, best_gain = 0, MIN_GAIN
    for k in range(1, MAX_DRAFT + 1):
        expected = k + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
        gain = expected / (1.0 + SPEC_OVERHEAD + ROW_COST * k)
        if gain > best_gain:
            best, best_gain = k, gain
    return best
