"""Images in the engine: their rows read as embeddings must not change answers with chunking,
batching or prefix reuse, exactly as text rows do not (smollm2:135m with the random test
projector of tests/projector.py: no real vision model is on PyPI)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import ImageSpan, Sequence
from lokal.engine.vision import IMAGE_MARKER, Bitmap, Projector, ProjectorError
from lokal.store.model_store import ModelStore
from tests.projector import N_IMAGE_TOKENS, write_test_projector

pytestmark = pytest.mark.slow

CHAT = "<|im_start|>user\n{marker}\n{question}<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingParams(temperature=0, max_tokens=16, repeat_penalty=1.1)  # penalties skip placeholder ids


def bitmap(colour: tuple[int, int, int], split: int = 20) -> Bitmap:
    px = np.full((40, 40, 3), 255, np.uint8)
    px[:, :split] = colour
    raw = px.tobytes()
    return Bitmap(40, 40, raw, hashlib.sha256(raw).digest())


RED, BLUE, GREEN = bitmap((255, 0, 0)), bitmap((0, 0, 255)), bitmap((0, 160, 0), split=30)


@pytest.fixture(scope="module")
def projector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_projector(tmp_path_factory.mktemp("proj") / "mmproj.gguf")


class Vision:
    """smollm2 with the projector and an engine of the given shape."""

    def __init__(self, model_home: Path, projector: Path, n_slots: int, n_batch: int) -> None:
        path = ModelStore(model_home).gguf_path("smollm2:135m")
        self.model = LlamaModel(path, ContextShape(slot_ctx=256, n_slots=n_slots, n_batch=n_batch, n_threads=2))
        self.projector = Projector(projector, self.model)
        self.engine = Engine(self.model)

    def sequence(self, image: Bitmap | None, question: str = "What is this?",
                 text: str | None = None) -> Sequence:
        prompt = text if text is not None else CHAT.format(marker=IMAGE_MARKER if image else "", question=question)
        tokens, spans = self.projector.prompt(prompt, [image] if image else [], add_special=False)
        return self.engine.new_sequence(tokens, GREEDY, spans)

    def run(self, *seqs: Sequence) -> list[list[int]]:
        for seq in seqs:
            self.engine.enqueue(seq)
        while self.engine.has_work():
            self.engine.step()
        return [seq.tokens[seq.n_prompt:] for seq in seqs]

    def close(self) -> None:
        self.projector.close()
        self.engine.close()


@pytest.fixture(scope="module")
def vision(model_home: Path, projector_path: Path) -> Iterator[Vision]:
    v = Vision(model_home, projector_path, n_slots=4, n_batch=256)
    yield v
    v.close()


def test_the_image_takes_its_tokens_positions_as_placeholders_and_answers_differ_by_image(vision: Vision) -> None:
    seq = vision.sequence(RED)
    (span,) = seq.images
    assert span.embd.shape == (N_IMAGE_TOKENS, vision.model.n_embd_inp)
    assert all(t < 0 for t in seq.prompt[span.start:span.end])
    assert all(t >= 0 for i, t in enumerate(seq.prompt) if not span.start <= i < span.end)
    answers = [vision.run(vision.sequence(img))[0] for img in (RED, BLUE, None)]
    assert len({tuple(a) for a in answers}) == 3
    assert vision.projector.n_encoded >= 2


def test_an_image_read_in_chunks_answers_as_read_whole(model_home: Path, projector_path: Path,
                                                       vision: Vision) -> None:
    whole = vision.run(vision.sequence(GREEN))[0]
    chunked = Vision(model_home, projector_path, n_slots=2, n_batch=5)  # 16 image rows over 4 steps
    try:
        seq = chunked.sequence(GREEN)
        chunked.engine.enqueue(seq)
        prompt_steps = 0
        while seq.n_generated == 0 and not seq.is_finished:
            chunked.engine.step()
            prompt_steps += 1
        while chunked.engine.has_work():
            chunked.engine.step()
        assert seq.tokens[seq.n_prompt:] == whole
        assert prompt_steps >= 4 + 2  # the image's 16 rows took 4 steps, the text around it 2 or more
    finally:
        chunked.close()


def test_image_requests_batched_with_text_requests_answer_as_alone(vision: Vision) -> None:
    alone_image = vision.run(vision.sequence(BLUE, "Describe it."))[0]
    alone_text = vision.run(vision.sequence(None, "Name a fruit."))[0]
    vision.engine.scheduler.prefix_cache = False  # every prompt read again, side by side
    try:
        together = vision.run(vision.sequence(BLUE, "Describe it."), vision.sequence(None, "Name a fruit."),
                              vision.sequence(RED, "Describe it."), vision.sequence(None, "Name a fruit."))
    finally:
        vision.engine.scheduler.prefix_cache = True
    assert together[0] == alone_image and together[1] == alone_text and together[3] == alone_text


def test_the_same_image_is_reused_from_the_cache_and_a_cut_inside_it_reads_only_the_rest(vision: Vision) -> None:
    # The prompt ends with the image: a repeat reuses all but its last row, which is read again
    # (as an embedding, with logits) to sample from: the cut falls inside the image.
    text = f"Look: {IMAGE_MARKER}"
    first = vision.sequence(RED, text=text)
    answer = vision.run(first)[0]
    again = vision.sequence(RED, text=text)
    assert vision.run(again)[0] == answer
    assert again.n_cached == again.n_prompt - 1
    other = vision.sequence(BLUE, text=text)
    vision.run(other)
    assert other.n_cached == other.images[0].start  # only the text before the image


def test_placeholders_outside_an_image_span_are_refused(vision: Vision) -> None:
    seq = vision.sequence(RED)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vision.engine.new_sequence(seq.prompt, GREEDY)  # the same ids without their image
    span = seq.images[0]
    wrong = ImageSpan(span.start, span.embd[:, :10], span.digest)
    with pytest.raises(ValueError, match="do not match"):
        vision.engine.new_sequence(seq.prompt, GREEDY, (wrong,))


def test_a_projector_for_another_model_or_no_projector_is_refused_at_load(vision: Vision, tmp_path: Path) -> None:
    wide = write_test_projector(tmp_path / "wide.gguf", n_embd_out=100)  # smollm2's width is 576
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(100))
    for path in (wide, junk):
        with pytest.raises(ProjectorError, match="could not load the vision projector"):
            Projector(path, vision.model)


def test_an_image_sequence_preempted_from_a_full_shared_pool_answers_as_without(model_home: Path,
                                                                               projector_path: Path) -> None:
    path = ModelStore(model_home).gguf_path("smollm2:135m")
    alone = Vision(model_home, projector_path, n_slots=1, n_batch=64)
    try:
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        expected = []
        for img in (RED, BLUE, GREEN):
            tokens, spans = alone.projector.prompt(CHAT.format(marker=IMAGE_MARKER, question="Go on."), [img], False)
            expected.append(alone.run(alone.engine.new_sequence(tokens, params, spans))[0])
    finally:
        alone.close()
    # Three sequences of ~34 prompt cells and 24 generated ones in a pool of 130 cells: one is preempted
    # (its cells dropped, the host tier off) and reads its text and its image again when readmitted.
    model = LlamaModel(path, ContextShape(slot_ctx=128, n_slots=3, n_batch=64, n_threads=2, kv_pool="shared",
                                          pool_cells=130))
    projector = Projector(projector_path, model)
    engine = Engine(model)
    try:
        seqs = []
        for img in (RED, BLUE, GREEN):
            tokens, spans = projector.prompt(CHAT.format(marker=IMAGE_MARKER, question="Go on."), [img], False)
            seqs.append(engine.new_sequence(tokens, params, spans))
        engine.enqueue(seqs)
        while engine.has_work():
            engine.step()
        assert engine.n_preempted >= 1
        assert [s.tokens[s.n_prompt:] for s in seqs] == expected
    finally:
        projector.close()
        engine.close()
