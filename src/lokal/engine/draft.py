"""Draft-model speculation: a smaller model with the same vocabulary guesses the next tokens of
every speculating sequence, all of them together (one llama_decode of the draft per draft position),
and the target verifies them as it verifies prompt-lookup drafts (docs/engine.md).

The draft has its own context with the target's ``ContextShape``: slot i of the draft mirrors
slot i of the target. It remembers which tokens each of its slots holds and, before drafting,
feeds a sequence's tokens from the first one that differs, so accepted, rejected and reused
cells of the target never need to be mirrored one by one."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lokal.engine.llama_model import LlamaModel, ModelLoadError
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import common_prefix
from lokal.engine.speculate import Acceptance, best_k

if TYPE_CHECKING:
    from lokal.engine.sequence import Sequence

log = logging.getLogger("lokal.engine")

# Steps between shadow drafts while drafting does not pay: each costs draft decodes, and the draft's
# cells must first catch up with what the sequence produced since, so the wait doubles after each.
PROBE_EVERY = 8
MAX_PROBE_EVERY = 256
PROBE_LENGTH = 2  # tokens a shadow draft guesses
BORROW_MIN = 32  # tokens a slot must gain before it copies another slot's draft cells instead of feeding
CATCH_UP_ALONE = 8  # rows of catch-up fed in a decode of their own (faster prompt-mode kernels)
VOCAB_SAMPLE = 4096  # token ids whose texts must match (spread over the vocabulary), special ones included


class DraftMismatch(ModelLoadError):
    """The draft model cannot draft for the target: another vocabulary, or cells it cannot cut."""


class SequenceDraft(Acceptance):
    """A sequence's acceptance of draft-model drafts, and when it next probes with a shadow draft
    (which, unlike a prompt lookup's, costs draft decodes: after ``PROBE_EVERY`` steps without
    drafting, then twice as long after each probe, up to ``MAX_PROBE_EVERY``)."""

    def __init__(self, draft_cost: float) -> None:
        super().__init__(draft_cost)
        self.idle_steps = 0
        self.probe_every = PROBE_EVERY

    def probe_due(self) -> bool:
        self.idle_steps += 1
        if self.idle_steps < self.probe_every:
            return False
        self.idle_steps = 0
        self.probe_every = min(2 * self.probe_every, MAX_PROBE_EVERY)
        return True


class DraftModel:
    """A second LlamaModel that drafts for ``target`` (its vocabulary checked at load).

    ``draft_cost``: guessing one token, in one-row decodes of the target; measured at load
    (``measure_cost``) unless given."""

    def __init__(self, path: Path, target: LlamaModel, draft_cost: float | None = None) -> None:
        # On the GPU, whole, when its target is whole there (a draft model is a fraction of its size).
        whole = target.offload.gpu_layers > target.n_layer
        self.model = LlamaModel(path, target.shape, target.offload if whole else None)
        try:
            check_vocabulary(self.model, target)
            self.draft_cost = measure_cost(self.model, target) if draft_cost is None else draft_cost
        except BaseException:
            self.model.close()
            raise
        self.n_vocab = target.n_vocab
        self._held: list[list[int]] = [[] for _ in range(target.shape.n_slots)]  # tokens each slot's cells hold
        self._argmax = self.model.new_sampler(SamplingParams(temperature=0), [])
        if best_k(1.0, self.draft_cost) == 0:
            log.warning("draft model %s costs %.2f target steps a token: too slow to pay, it drafts nothing",
                        path.name, self.draft_cost)

    def new_state(self) -> SequenceDraft:
        """A speculating sequence's own acceptance state (``Sequence.lookup``)."""
        return SequenceDraft(self.draft_cost)

    def propose(self, wants: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Drafts for (sequence, at most this many tokens) pairs, one list per pair: min(k, limit)
        tokens the draft model picks greedily, or none where drafting does not pay (then, now and then,
        a shadow draft to keep the acceptance rate learning). Nothing at all, not even shadow drafts,
        when the draft is too slow to pay at any acceptance rate."""
        out: list[list[int]] = [[] for _ in wants]
        if best_k(1.0, self.draft_cost) == 0:  # too slow to pay even if every draft were accepted
            return out
        jobs: list[tuple[int, Sequence, int, bool]] = []  # (index in wants, sequence, n, shadow)
        for i, (seq, limit) in enumerate(wants):
            state = seq.lookup
            assert isinstance(state, SequenceDraft)
            state.score_shadow(seq.tokens)
            n = min(state.k, limit)
            if n > 0:
                jobs.append((i, seq, n, False))
                state.idle_steps, state.probe_every = 0, PROBE_EVERY
            elif limit > 0 and not state.shadowing and state.probe_due():
                jobs.append((i, seq, min(PROBE_LENGTH, limit), True))
        if not jobs:
            return out
        try:
            guesses = self._draft([(_slot(seq), seq.tokens, n) for _, seq, n, _ in jobs])
        except RuntimeError as exc:  # a failed draft only costs this step's drafts
            log.warning("draft model failed, its cells are dropped: %s", exc)
            for slot in range(len(self._held)):
                self.model.forget(slot, 0)
                self._held[slot] = []
            return out
        for (i, seq, _, shadow), guess in zip(jobs, guesses, strict=True):
            if shadow:
                assert isinstance(seq.lookup, SequenceDraft)
                seq.lookup.shadow(len(seq.tokens), guess)
            else:
                out[i] = guess
        return out

    def _draft(self, jobs: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each (slot, tokens, n): bring the slot's cells to ``tokens[:-1]``, then feed the last
        token and n - 1 guesses, all slots in one decode per position; n guesses per slot (fewer
        after an end-of-generation guess)."""
        model, held = self.model, self._held
        for slot, tokens, _ in jobs:  # cut each slot at its first difference
            keep = min(common_prefix(held[slot], tokens), len(tokens) - 1)
            if len(held[slot]) > keep and not model.forget(slot, keep):
                model.forget(slot, 0)
                keep = 0
            held[slot] = held[slot][:keep]
        borrowed: set[int] = set()
        for slot, tokens, _ in jobs:  # a prefix the target borrowed from another slot: copy it too
            best, best_n = None, len(held[slot]) + BORROW_MIN
            for src, cells in enumerate(held):
                if src != slot and src not in borrowed:
                    n = min(common_prefix(cells, tokens), len(tokens) - 1)
                    if n >= best_n:
                        best, best_n = src, n
            if best is not None and model.share_prefix(best, slot, best_n):
                held[slot] = list(tokens[:best_n])
                borrowed.add(slot)
            elif best is not None:
                model.forget(slot, 0)
                held[slot] = []
        feed = [(t, p, slot, False) for slot, tokens, _ in jobs for p, t in enumerate(tokens[len(held[slot]):-1],
                                                                                      len(held[slot]))]
        n_batch = model.shape.n_batch - len(jobs)
        # A long catch-up (a prompt, tokens produced while no draft was made) goes in prompt mode,
        # in chunks; a short one rides with the last tokens.
        while len(feed) > (n_batch if len(feed) < CATCH_UP_ALONE else 0):
            model.decode(feed[:model.shape.n_batch], prompt=True)
            feed = feed[model.shape.n_batch:]
        last = [(tokens[-1], len(tokens) - 1, slot, True) for slot, tokens, _ in jobs]
        rows = sorted(feed + last, key=lambda row: (row[2], row[1]))  # slot order, positions ascending
        guesses: list[list[int]] = [[] for _ in jobs]
        index = {slot: i for i, (slot, _, _) in enumerate(jobs)}
        for slot, tokens, _ in jobs:
            held[slot] = list(tokens)
        while rows:
            model.decode(rows)
            nxt = []
            for row_i, (_, pos, slot, logits) in enumerate(rows):
                if not logits:
                    continue
                j = index[slot]
                token = model.sample(self._argmax, row_i)
                guess = guesses[j]
                guess.append(token)
                if len(guess) < jobs[j][2] and not model.is_eog(token):
                    nxt.append((token, pos + 1, slot, True))
                    held[slot].append(token)
            rows = nxt
        return guesses

    def close(self) -> None:
        self._argmax.free()
        self.model.close()


def _slot(seq: Sequence) -> int:
    assert seq.slot is not None
    return seq.slot


def check_vocabulary(draft: LlamaModel, target: LlamaModel) -> None:
    """DraftMismatch unless the draft reads and writes tokens as the target does: the same number
    of tokens, the same BOS/EOS and BOS habit, the same text for a spread of token ids, and cells
    that can be cut back after a rejected draft."""
    if draft.n_vocab != target.n_vocab:
        raise DraftMismatch(f"the draft model has {draft.n_vocab} tokens, the target model {target.n_vocab}: "
                            "a draft model must share the target's vocabulary")
    if (draft.bos_text, draft.eos_text, draft.add_bos) != (target.bos_text, target.eos_text, target.add_bos):
        raise DraftMismatch("the draft model has other BOS/EOS tokens than the target model")
    step = max(1, target.n_vocab // VOCAB_SAMPLE)
    for token in sorted({*range(0, target.n_vocab, step), *range(min(256, target.n_vocab)), target.n_vocab - 1}):
        if draft.token_text(token) != target.token_text(token) or draft.is_eog(token) != target.is_eog(token):
            raise DraftMismatch(
                f"the draft model reads token {token} as {draft.token_text(token)!r}, the target model as "
                f"{target.token_text(token)!r}: a draft model must share the target's vocabulary")
    if not draft.can_rewind:
        raise DraftMismatch("the draft model is recurrent: its state cannot be cut back after a rejected draft")


def measure_cost(draft: LlamaModel, target: LlamaModel, context: int = 64, reps: int = 8) -> float:
    """What one draft token costs in target steps: the draft's one-row decode time over the
    target's, each the fastest of ``reps`` taken in turn (a busy machine slows some), after
    ``context`` tokens in slot 0, which is emptied again."""
    models = (draft, target)
    n = min(context, target.shape.slot_ctx - reps - 2, target.shape.n_batch)
    best = [float("inf"), float("inf")]
    token = target.tokenize("a", add_special=False, parse_special=False)[0]  # the same id in both
    try:
        for m in models:
            m.decode([(token, p, 0, False) for p in range(n)], prompt=True)
            m.decode([(token, n, 0, True)])  # the first one-row decode sets up its graph
        for i in range(reps):
            for j, m in enumerate(models):
                start = time.perf_counter()
                m.decode([(token, n + 1 + i, 0, True)])
                best[j] = min(best[j], time.perf_counter() - start)
    finally:
        for m in models:
            m.forget(0, 0)
    return best[0] / best[1]
