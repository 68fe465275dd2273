"""The engine step: admit, build one batch for every running sequence, decode once, sample each.

`Engine` is single-threaded and synchronous (the offline `LLM` drives it directly);
`AsyncEngine` runs it on its own thread for the server."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from lokal.engine.draft import DraftModel
from lokal.engine.host_prefixes import HostPrefixes
from lokal.engine.llama_model import KvPoolFull, LlamaModel, LoraAdapter, SamplerChain
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import Admission, QueueFull, Scheduler
from lokal.engine.sequence import Adapters, Delta, FinishReason, ImageSpan, Sequence, SequenceStatus
from lokal.engine.speculate import Drafter, LookupDrafter, Speculation
from lokal.options import MAX_SEED

MAX_CHOICES = 16  # n of one request (OpenAI's n); beyond the free slots, siblings wait in the queue


class PromptTooLong(ValueError):
    """The prompt does not fit in one slot's context."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        super().__init__(
            f"prompt is {n_prompt} tokens but the context holds {n_ctx} tokens "
            f"(and at least one must be left to generate)"
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for monitoring: what the engine is doing right now and how fast."""

    running: int
    waiting: int
    slots: int
    kv_cells_used: int
    kv_cells_total: int
    tokens_per_second: float  # generated tokens/s over the last window
    window_s: float
    steps: int
    generated_tokens: int
    prompt_tokens: int
    cached_prompt_tokens: int
    recent_ttft_s: tuple[float, ...]
    host_prefixes: int = 0  # evicted prefixes kept in host memory
    host_prefix_bytes: int = 0
    drafted_tokens: int = 0  # speculative draft tokens fed to the model
    accepted_tokens: int = 0  # of those, the greedy pick confirmed
    kv_pool: str = "per-slot"  # ContextShape.kv_pool
    preemptions: int = 0  # sequences put back in the queue because the shared KV pool ran out


class Engine:
    """Continuous batching over one LlamaModel: every running sequence advances in each decode."""

    def __init__(
        self,
        model: LlamaModel,
        max_queue: int = 256,
        prefix_cache: bool = True,
        stats_window_s: float = 10.0,
        host_prefix_bytes: int = 0,
        speculation: Speculation = Speculation.OFF,
        draft: DraftModel | None = None,
    ) -> None:
        self.model = model
        self.draft = draft  # a draft model drafts for every speculating sequence (over ``speculation``)
        if draft is not None:
            speculation = Speculation.DRAFT
        # Drafts need their rejected KV cells cut off again: not for recurrent state.
        self.speculation = speculation if model.can_rewind else Speculation.OFF
        self.drafter: Drafter | None = (
            draft if self.speculation is Speculation.DRAFT
            else LookupDrafter() if self.speculation is Speculation.NGRAM else None
        )
        self.host = HostPrefixes(host_prefix_bytes if prefix_cache else 0)
        self.scheduler = Scheduler(
            n_slots=model.shape.n_slots,
            token_budget=model.shape.n_batch,
            max_queue=max_queue,
            prefix_cache=prefix_cache,
            host=self.host,
            reuse_generated=not model.has_kernel_modes,
            drafter=self.drafter,
            pool=model.cells if model.shape.shared else None,
        )
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[int] = deque()
        self._unloads: deque[LoraAdapter] = deque()  # LoRA adapters to free on the engine thread
        self._lock = threading.Lock()
        self._stats_window_s = stats_window_s
        self._recent_steps: deque[tuple[float, int]] = deque()
        self._recent_ttft: deque[float] = deque(maxlen=64)
        self.n_steps = 0
        self.n_generated = 0
        self.n_prompt = 0
        self.n_cached = 0
        self.n_drafted = 0
        self.n_accepted = 0
        self.n_preempted = 0
        self.n_swapped = 0  # of those, preempted with their cells saved to host memory
        self._swapped_bytes = 0  # preempted sequences' saved cells, within the host tier's capacity

    # ---- called from any thread -----------------------------------------------------------
    def add(self, prompt: list[int], params: SamplingParams, images: tuple[ImageSpan, ...] = (),
            adapters: Adapters = ()) -> Sequence:
        """Queue a request. Raises PromptTooLong, ValueError or QueueFull at once."""
        seq = self.new_sequence(prompt, params, images, adapters)
        self.enqueue(seq)
        return seq

    def new_sequence(self, prompt: list[int], params: SamplingParams,
                     images: tuple[ImageSpan, ...] = (), adapters: Adapters = ()) -> Sequence:
        """A checked, not yet queued sequence (PromptTooLong or ValueError if it cannot run).
        ``images``: the prompt's image spans (their positions hold placeholder ids, not tokens);
        ``adapters``: LoRA adapters loaded on this model (``LlamaModel.load_adapter``) and their scales."""
        n_ctx = self.model.shape.slot_ctx
        if len(prompt) == 0:
            raise ValueError("the prompt is empty")
        if len(prompt) >= n_ctx:
            raise PromptTooLong(len(prompt), n_ctx)
        in_image: set[int] = set()
        last_end = 0
        for span in images:
            if span.start < last_end or span.end > len(prompt) or span.embd.ndim != 2 \
                    or span.embd.shape[1] != self.model.n_embd_inp:
                raise ValueError("image embeddings do not match the prompt or the model")
            in_image.update(range(span.start, span.end))
            last_end = span.end
        bad = next((t for i, t in enumerate(prompt) if i not in in_image and not self.model.valid_token(t)), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.model.n_vocab - 1})")
        for tok in params.logit_bias:
            if not self.model.valid_token(tok):
                raise ValueError(f"logit_bias token id {tok} is outside the vocabulary")
        if params.grammar is not None:
            if params.ignore_eos:
                raise ValueError("ignore_eos cannot be combined with a grammar (structured output)")
            self.model.check_grammar(params.grammar)  # GrammarError (a ValueError) if llama.cpp refuses it
        if any(adapter.ptr is None for adapter, _ in adapters):
            raise ValueError("the model's LoRA adapter has been unloaded")
        return Sequence(prompt=prompt, params=params, max_context=n_ctx, images=images, adapters=adapters)

    def new_group(self, prompt: list[int], params: SamplingParams, n: int,
                  images: tuple[ImageSpan, ...] = (), adapters: Adapters = ()) -> list[Sequence]:
        """n checked sequences for one prompt (an n > 1 request): the first reads the prompt, the
        others copy its KV cells once it has (``Sequence.leader``) and then decode on their own.
        With a seed, sibling i samples with seed + i, so that seed and n reproduce every choice."""
        if not 1 <= n <= MAX_CHOICES:
            raise ValueError(f"n must be between 1 and {MAX_CHOICES}")
        first = self.new_sequence(prompt, params, images, adapters)
        group = [first]
        for i in range(1, n):
            seed = None if params.seed is None else (params.seed + i) % (MAX_SEED + 1)
            sibling = Sequence(prompt=prompt, params=params.model_copy(update={"seed": seed}),
                               max_context=first.max_context, leader=first, images=images, adapters=adapters)
            group.append(sibling)
        return group

    def enqueue(self, seq: Sequence | list[Sequence]) -> int:
        """Hand a sequence (or an n > 1 group, all at once) to the engine thread (QueueFull when
        too many already wait). Returns how many sequences were waiting ahead of it."""
        seqs = seq if isinstance(seq, list) else [seq]
        with self._lock:
            ahead = len(self._inbox) + len(self.scheduler.waiting)
            if self.scheduler.queued_beyond_slots(len(self._inbox) + len(seqs)) > self.scheduler.max_queue:
                raise QueueFull(ahead)
            self._inbox.extend(seqs)
            return ahead

    def abort(self, seq_id: int) -> None:
        """Stop a sequence; its slot and KV cells are freed at the start of the next step."""
        with self._lock:
            self._aborts.append(seq_id)

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Free a LoRA adapter at the start of the next step, on the engine thread (no decode is using
        it then); sequences still decoding with it are cancelled first."""
        with self._lock:
            self._unloads.append(adapter)

    def has_work(self) -> bool:
        return bool(self._inbox or self._aborts or self._unloads or self.scheduler.has_work())

    # ---- the engine thread ----------------------------------------------------------------
    def step(self) -> list[tuple[Sequence, Delta]]:
        """One scheduling round and at most one llama_decode. Returns the deltas it produced."""
        out: list[tuple[Sequence, Delta]] = []
        self._drain_inbox(out)
        if self._unloads:
            self._free_adapters(out)
        for admission in self.scheduler.admit():
            self._start(admission)
            out.append((admission.seq, Delta(started=True, usage=admission.seq.usage())))
        plan = self.scheduler.schedule()
        if self.scheduler.pool is not None:
            plan = self._fit_pool(plan)
        if not plan:
            return out
        # Image rows are input embeddings: a llama_decode of their own (prompt mode), after the others.
        images = [p for p in plan if p[0].images and p[0].segment_end(p[0].n_past)[1] is not None]
        if images:
            plan = [p for p in plan if p not in images]
        if self.model.has_kernel_modes:
            # Generated tokens (with their drafts) and prompt chunks go to llama.cpp in separate calls, so
            # each always meets the same kernels: decode mode and prompt mode (docs/engine.md). A resumed
            # sequence's generated tokens are read again as generated ones (the scheduler feeds them
            # only once its prompt is in).
            passes = [([p for p in plan if p[0].n_past >= p[0].n_prompt], False),
                      ([p for p in plan if p[0].n_past < p[0].n_prompt], True)]
        else:
            passes = [(plan, False)]
        n_out = 0
        for part, prompt in passes:
            if part:
                n_out += self._decode(part, prompt, out)
        if images:
            n_out += self._decode(images, True, out, embeddings=True)
        self.n_steps += 1
        self._record_step(time.perf_counter(), n_out)
        return out

    def _decode(self, plan: list[tuple[Sequence, int]], prompt: bool, out: list[tuple[Sequence, Delta]],
                embeddings: bool = False) -> int:
        """One llama_decode over the plan's rows, then each sequence's pick (or its drafts' verification).
        ``embeddings``: the rows are image positions, fed as their projector embeddings.
        Returns how many tokens it produced."""
        rows: list[tuple[int, int, int, bool]] = []
        blocks: list[tuple[np.ndarray, int, int, bool]] = []  # image rows: (embeddings, first position, slot, logits)
        n_blocked = 0
        to_sample: list[tuple[Sequence, int]] = []
        to_verify: list[tuple[Sequence, int, list[int]]] = []
        for seq, n in plan:
            assert seq.slot is not None
            start, toks, slot = seq.n_past, seq.tokens, seq.slot
            if seq.drafts:  # the last token and its drafts, each with logits (n == 1 + drafts)
                drafts, seq.drafts = seq.drafts, []
                to_verify.append((seq, len(rows), drafts))
                rows.extend((t, start + i, slot, True) for i, t in enumerate([toks[-1], *drafts]))
                seq.n_past = start + 1
                continue
            end = start + n
            seq.n_past = end
            if embeddings:  # within one image (Scheduler.schedule cuts chunks at its edges)
                span = seq.segment_end(start)[1]
                assert span is not None and end <= span.end
                blocks.append((span.embd[start - span.start:end - span.start], start, slot, end == len(toks)))
                n_blocked += n
                if end == len(toks):
                    to_sample.append((seq, n_blocked - 1))
                continue
            last = len(toks) - 1
            rows.extend((toks[p], p, slot, p == last) for p in range(start, end))
            if end == len(toks):
                to_sample.append((seq, len(rows) - 1))
        try:
            self.model.use_adapters(plan[0][0].adapters)  # the scheduler's rows share one set of adapters
            if embeddings:
                self.model.decode_embeddings(blocks)
            else:
                self.model.decode(rows, prompt=prompt)
        except KvPoolFull:  # nothing was computed: undo, and free the newest sequence's cells
            for seq, _ in plan:
                seq.n_past = self.model.cells.held(seq.slot) if seq.slot is not None else 0
                seq.drafts = []
            newest = self.scheduler.newest()
            if newest is not None:
                self._preempt(newest)
            return 0
        except Exception as exc:  # a failed decode must not leave clients hanging
            for seq, _ in plan:
                self._finish(seq, FinishReason.ERROR, out, error=str(exc))
            return 0
        now = time.perf_counter()
        for seq, index in to_sample:
            assert isinstance(seq.sampler, SamplerChain)
            token = self.model.sample(seq.sampler, index)
            if seq.params.logprobs is not None:  # only sequences that asked pay for the log-softmax
                seq.pending_logprobs.append(self.model.logprobs(index, token, seq.params.logprobs))
            self._accept(seq, token, now, out)
        n_out = len(to_sample)
        for seq, index, drafts in to_verify:
            n_out += self._verify(seq, index, drafts, now, out)
        return n_out

    def _verify(self, seq: Sequence, index: int, drafts: list[int], now: float,
                out: list[tuple[Sequence, Delta]]) -> int:
        """Accept the longest prefix of ``drafts`` that the sequence's own sampler picks, row by row
        (the same picks, penalty window included, as decoding one token a step), plus the pick that
        differs (or follows the last draft). Each goes through ``_accept``, so EOS, stop strings and
        max_tokens cut exactly where they would; the rejected drafts' KV cells are removed."""
        assert seq.slot is not None and isinstance(seq.sampler, SamplerChain)
        slot, start = seq.slot, seq.n_past - 1  # the last token's position; its cell is written
        n_accepted = 0
        n_emitted = 0
        for i in range(len(drafts) + 1):
            assert isinstance(seq.sampler, SamplerChain)
            token = self.model.sample(seq.sampler, index + i)
            if seq.params.logprobs is not None:
                seq.pending_logprobs.append(self.model.logprobs(index + i, token, seq.params.logprobs))
            seq.n_past = start + 1 + i  # the cells of the last token and the drafts accepted so far
            self._accept(seq, token, now, out)
            n_emitted += 1
            if seq.is_finished or i == len(drafts) or token != drafts[i]:
                break
            n_accepted += 1
        self.n_drafted += len(drafts)
        self.n_accepted += n_accepted
        if seq.lookup is not None:
            seq.lookup.update(len(drafts), n_accepted)
        if start + 1 + len(drafts) > seq.n_past and not self.model.forget(slot, seq.n_past):
            self._finish(seq, FinishReason.ERROR, out, error="could not remove rejected draft tokens")
        return n_emitted

    def _fit_pool(self, plan: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
        """Make the shared pool hold this step's rows: drop cached prefixes of free slots (least
        recently used first, saved to the host tier when worth it), then drafts, then prompt
        chunks of the newest sequences, then preempt the newest sequence (its cells dropped; it
        waits at the head of the queue and reads its tokens again), until the rows fit."""
        cells = self.model.cells
        sched = self.scheduler
        while sum(n for _, n in plan) > cells.free:
            cached = [s for s in sched.free_slots if cells.held(s)]
            if cached:
                slot = min(cached, key=lambda s: sched.slot_used_at[s])
                self._save_evicted(slot, 0)
                self.model.forget(slot, 0)
                sched.slot_cache[slot] = []
                continue
            if any(seq.drafts for seq, _ in plan):
                for seq, _ in plan:
                    seq.drafts = []
                plan = [(seq, 1) if seq.status is SequenceStatus.DECODING else (seq, n) for seq, n in plan]
                continue
            short = sum(n for _, n in plan) - cells.free
            prompts = sorted((row for row in plan if row[0].status is SequenceStatus.PREFILLING),
                             key=lambda row: row[0].admitted_at or 0.0, reverse=True)
            if prompts:
                seq, n = prompts[0]
                cut = min(n, short)
                plan = [(s, m - cut) if s is seq else (s, m) for s, m in plan]
                plan = [(s, m) for s, m in plan if m > 0]
                continue
            newest = sched.newest()
            if newest is None or len(sched.running) == 1:
                break  # one sequence always fits: the pool holds at least one context
            self._preempt(newest)
            plan = [(s, m) for s, m in plan if s is not newest]
        return plan

    def _preempt(self, seq: Sequence) -> None:
        """The pool ran out: seq's cells go to host memory when the host tier has room for them (restored
        when it is readmitted), else they are dropped (read again); it waits at the head of the queue."""
        if seq.slot is not None:
            if self.host.enabled and self.model.cells.held(seq.slot) > 0:
                state = self.model.save_sequence(seq.slot)
                if self._swapped_bytes + len(state) <= self.host.capacity_bytes:
                    seq.swapped = state
                    self._swapped_bytes += len(state)
                    self.n_swapped += 1
            self.model.forget(seq.slot, 0)
        self.scheduler.preempt(seq)
        self.n_preempted += 1

    def _swap_in(self, seq: Sequence, slot: int) -> int:
        """Put a preempted sequence's saved cells into its new slot; how many it holds (0: read again)."""
        state, seq.swapped = seq.swapped, None
        assert state is not None
        self._swapped_bytes -= len(state)
        self.model.forget(slot, 0)
        if not self.model.restore_sequence(slot, state):  # type: ignore[arg-type]
            self.model.forget(slot, 0)
            return 0
        return self.model.cached_tokens(slot)

    def _drain_inbox(self, out: list[tuple[Sequence, Delta]]) -> None:
        with self._lock:
            new = list(self._inbox)
            self._inbox.clear()
            aborts = set(self._aborts)
            self._aborts.clear()
        for seq in new:
            self.scheduler.add(seq)
        if not aborts:
            return
        for seq in list(self.scheduler.waiting):
            if seq.id in aborts:
                self.scheduler.remove_waiting(seq)
                self._finish(seq, FinishReason.CANCELLED, out)
        for seq in list(self.scheduler.running):
            if seq.id in aborts:
                self._finish(seq, FinishReason.CANCELLED, out)

    def _free_adapters(self, out: list[tuple[Sequence, Delta]]) -> None:
        with self._lock:
            unloads = list(self._unloads)
            self._unloads.clear()
        for adapter in unloads:
            for seq in [*self.scheduler.waiting, *self.scheduler.running]:
                if any(a is adapter for a, _ in seq.adapters):
                    self.scheduler.remove_waiting(seq)
                    self._finish(seq, FinishReason.CANCELLED, out, error="its LoRA adapter was unloaded")
            self.model.free_adapter(adapter)  # cached prefixes computed with it never match again: keyed by it

    def _start(self, a: Admission) -> None:
        seq, n = a.seq, a.n_reused
        self._save_evicted(a.slot, n if a.source == a.slot else 0)
        if seq.swapped is not None:
            n = self._swap_in(seq, a.slot)
        elif a.stored is not None:
            n = self._restore(a.slot, a.stored, n)
        elif a.source == a.slot and n > 0:
            if not self.model.forget(a.slot, n):
                self.model.forget(a.slot, 0)
                n = 0
        else:
            self.model.forget(a.slot, 0)
            if a.source is not None and n > 0:
                n = min(n, self.model.cached_tokens(a.source))  # the source may have been cut
                if n <= 0 or not self.model.share_prefix(a.source, a.slot, n):
                    self.model.forget(a.slot, 0)
                    n = 0
        seq.n_past = n
        if seq.resumed:  # its sampler, drafting state and counts carry on
            return
        seq.n_cached = n
        recent_n = seq.params.repeat_last_n if seq.params.repeat_last_n >= 0 else seq.n_prompt
        recent = seq.prompt[-recent_n:] if recent_n else []
        if seq.images:  # an image's placeholder ids are no tokens to penalise
            recent = [t for t in recent if t >= 0]
        seq.sampler = self.model.new_sampler(seq.params, recent)
        # Speculation for greedy and sampled sequences alike: _verify samples each row with the sequence's
        # own chain, one random draw per emitted token as without drafts, and keeps a draft only where
        # the pick equals it (accepted with probability p(draft): the target distribution is kept).
        # Not with images: a draft model cannot read their placeholder ids.
        if self.drafter is not None and seq.params.grammar is None and not seq.images:
            seq.lookup = self.drafter.new_state()
        self.n_prompt += seq.n_prompt
        self.n_cached += n

    def close(self) -> None:
        """Free llama.cpp's state: the draft model's and the model's (the engine thread must be done)."""
        if self.draft is not None:
            self.draft.close()
        self.model.close()

    def _save_evicted(self, slot: int, kept: int) -> None:
        """Copy a free slot's cached prefix to host memory before a new request overwrites it
        (keeping only its first ``kept`` cells)."""
        cached = self.scheduler.slot_cache[slot]
        adapters = self.scheduler.slot_adapters[slot]
        if len(cached) <= kept or not self.host.worth_saving(cached, adapters):
            return
        if self.model.cached_tokens(slot) < len(cached):  # the cells are not what the scheduler thinks
            return
        if self.model.cached_tokens(slot) > len(cached) and not self.model.forget(slot, len(cached)):
            return  # generated cells beyond the reusable prefix could not be dropped
        self.host.put(cached, self.model.save_sequence(slot), adapters)

    def _restore(self, slot: int, key: int, n: int) -> int:
        """Put a host entry's cells back into a slot and keep its first n; how many are kept."""
        entry = self.host.take(key)
        if entry is None or not self.model.restore_sequence(slot, entry.state):  # type: ignore[arg-type]
            self.host.discard(key)
            self.model.forget(slot, 0)
            return 0
        if self.model.cached_tokens(slot) < n or not self.model.forget(slot, n):
            self.model.forget(slot, 0)
            return 0
        return n

    def _accept(self, seq: Sequence, token: int, now: float, out: list[tuple[Sequence, Delta]]) -> None:
        if seq.status is SequenceStatus.PREFILLING:
            seq.status = SequenceStatus.DECODING
            if seq.first_token_at is None:
                seq.first_token_at = now
                self._recent_ttft.append(now - seq.arrived_at)
        if self.model.is_eog(token) and not seq.params.ignore_eos:
            if seq.pending_logprobs and seq.pending_logprobs[-1].token == token:
                seq.pending_logprobs.pop()  # the end-of-generation token is not part of the answer
            self._finish(seq, FinishReason.STOP, out)
            return
        seq.tokens.append(token)
        seq.n_generated += 1
        self.n_generated += 1
        text, stopped = seq.detokenizer.feed(self.model.piece(token))
        if stopped is not None:
            self._finish(seq, FinishReason.STOP, out, text=text, flush=False, stop=stopped)
        elif seq.params.max_tokens is not None and seq.n_generated >= seq.params.max_tokens:
            self._finish(seq, FinishReason.LENGTH, out, text=text)
        elif len(seq.tokens) >= seq.max_context:
            self._finish(seq, FinishReason.LENGTH, out, text=text)
        elif text:
            out.append((seq, Delta(text=text, token_ids=(token,), logprobs=seq.take_logprobs())))

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        out: list[tuple[Sequence, Delta]],
        text: str = "",
        flush: bool = True,
        error: str | None = None,
        stop: str | None = None,
    ) -> None:
        if seq.is_finished:
            return
        if flush and reason in (FinishReason.STOP, FinishReason.LENGTH):
            text += seq.detokenizer.flush()
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.swapped is not None:  # cancelled while preempted
            self._swapped_bytes -= len(seq.swapped)
            seq.swapped = None
        seq.finished_at = time.perf_counter()
        if isinstance(seq.sampler, SamplerChain):
            seq.sampler.free()
        seq.sampler = None
        if seq.slot is not None:
            keep = reason is not FinishReason.ERROR  # a failed decode may have left the cells half written
            self.scheduler.release(seq, keep_cache=keep)
            if not self.scheduler.prefix_cache or not keep:
                self.model.forget(seq.slot, 0)
        out.append((seq, Delta(text=text, finish_reason=reason, usage=seq.usage(), timings=seq.timings(),
                               error=error, logprobs=seq.take_logprobs(), stop=stop)))

    def _record_step(self, now: float, n_tokens: int) -> None:
        steps = self._recent_steps
        steps.append((now, n_tokens))
        while steps and now - steps[0][0] > self._stats_window_s:
            steps.popleft()

    def stats(self) -> EngineStats:
        now = time.perf_counter()
        steps = [(t, n) for t, n in list(self._recent_steps) if now - t <= self._stats_window_s]
        window = self._stats_window_s
        tps = sum(n for _, n in steps) / window if steps else 0.0
        sched = self.scheduler
        return EngineStats(
            running=len(sched.running),
            waiting=len(sched.waiting) + len(self._inbox),
            slots=sched.n_slots,
            kv_cells_used=self.model.cells.used,
            kv_cells_total=self.model.shape.n_ctx,
            tokens_per_second=tps,
            window_s=window,
            steps=self.n_steps,
            generated_tokens=self.n_generated,
            prompt_tokens=self.n_prompt,
            cached_prompt_tokens=self.n_cached,
            recent_ttft_s=tuple(self._recent_ttft),
            host_prefixes=len(self.host),
            host_prefix_bytes=self.host.used_bytes,
            drafted_tokens=self.n_drafted,
            accepted_tokens=self.n_accepted,
            kv_pool=self.model.shape.kv_pool,
            preemptions=self.n_preempted,
        )
