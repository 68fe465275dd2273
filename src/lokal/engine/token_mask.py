"""Grammar-constrained sampling's token mask, computed by llguidance.

lokal writes every constraint as GBNF (``grammar.py``, ``gbnf.py``); llguidance runs it, through its
own GBNF → Lark translation. Measured by ``benchmarks/grammar_mask.py`` at 8 concurrent streams on
smollm2's 49k-token vocabulary, a full mask costs about 0.04 ms a token here against 3-4 ms in
llama.cpp's grammar sampler, which lokal used before (docs/performance.md); checking the one token
the chain picked costs about as little, so that stays the first step (``TokenMask.consume``) and
the mask is only computed when the pick is refused (a quarter to 40 % of the steps of a small
model writing JSON)."""

from __future__ import annotations

from functools import lru_cache

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import gbnf_to_lark


class GrammarError(ValueError):
    """A grammar the mask engine cannot compile."""


@lru_cache(maxsize=256)
def _compiled(gbnf: str) -> str:
    """The llguidance grammar of GBNF text (one per distinct text: a schema's grammar repeats)."""
    try:
        return llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(gbnf))
    except Exception as exc:  # the translator raises its own errors and assertion failures alike
        raise GrammarError(f"the grammar could not be compiled: {exc}") from exc


def check_grammar(tokenizer: llguidance.LLTokenizer, gbnf: str) -> None:
    """GrammarError unless ``gbnf`` compiles for this vocabulary."""
    error = llguidance.LLMatcher.validate_grammar(_compiled(gbnf), tokenizer)
    if error and not error.startswith("WARNING"):
        raise GrammarError(f"the grammar could not be compiled: {error}")


class TokenMask:
    """One sequence's position in its grammar: whether a token may come next, and the whole set
    of those that may. Used on the engine thread only."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, n_vocab: int, gbnf: str) -> None:
        self._matcher = llguidance.LLMatcher(tokenizer, _compiled(gbnf), log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"the grammar could not be compiled: {self._matcher.get_error()}")
        self._n_vocab = n_vocab
        self._eos = frozenset(tokenizer.eos_tokens)
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def consume(self, token: int) -> bool:
        """Advance past ``token`` if the grammar allows it there; False (and no change) if not."""
        if self._matcher.is_stopped():  # the grammar is complete and nothing may follow: only an EOS
            return token in self._eos
        return self._matcher.try_consume_tokens([token]) == 1

    def allowed(self) -> np.ndarray:
        """A boolean array over the vocabulary: the tokens that may come next."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._matcher.is_error():
            raise RuntimeError(f"the grammar matcher failed: {self._matcher.get_error()}")
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._n_vocab].astype(bool)
