"""A chat model's vision projector, through llama.cpp's multimodal library (libmtmd).

It turns a prompt whose text holds ``marker`` once per image into token ids and ``ImageSpan``s:
mtmd splits the text at the markers (adding the begin/end-of-image tokens the model expects),
its CLIP encoder and projector turn each image into rows of input embeddings, and the image's
positions get placeholder ids derived from its content hash (``image_placeholders``). The engine
then decodes those rows into the sequence's KV cells as a prompt chunk of their own
(``LlamaModel.decode_embeddings``). Encoding runs on the caller's thread (the runtime prepares
prompts off the engine thread), one image at a time; the latest images' embeddings are kept, so
a repeated image is not encoded again."""

from __future__ import annotations

import ctypes
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from llama_cpp import mtmd_cpp as M

from lokal.engine.llama_model import LlamaModel, ModelLoadError, _quiet_log
from lokal.engine.sequence import ImageSpan, image_placeholders

# A marker no client text contains by chance: user text holding it could otherwise place images.
IMAGE_MARKER = f"<__lokal_image_{secrets.token_hex(8)}__>"
EMBEDDING_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Bitmap:
    """A decoded image: ``width`` × ``height`` RGB pixels (row-major, 3 bytes each) and the
    sha256 of those pixels and their size (the image's identity in the prefix cache)."""

    width: int
    height: int
    rgb: bytes
    digest: bytes


class ProjectorError(ModelLoadError):
    """The projector file cannot serve this model (mtmd refused it, or it is not a vision one)."""


class Projector:
    """An mtmd context over a loaded model's weights: prompts with images to tokens and spans."""

    def __init__(self, path: Path, model: LlamaModel) -> None:
        M.mtmd_log_set(_quiet_log, None)  # errors only, as llama.cpp's own log
        params = M.mtmd_context_params_default()
        params.use_gpu = model.offload.on_gpu
        params.n_threads = model.shape.n_threads
        params.print_timings = False
        params.warmup = False  # a warm-up encode costs as much as an image; the first request pays it
        self._marker = IMAGE_MARKER.encode()
        params.media_marker = self._marker  # the struct keeps the pointer: self._marker must outlive it
        ctx = M.mtmd_init_from_file(str(path).encode(), model._model, params)
        if not ctx:
            raise ProjectorError(f"llama.cpp's mtmd could not load the vision projector {path.name} for this "
                                 "model: not a projector, or one for a model of another embedding width")
        self._ctx = ctx
        if not M.mtmd_support_vision(ctx):
            self.close()
            raise ProjectorError(f"{path.name} is not a vision projector")
        if M.mtmd_decode_use_mrope(ctx):
            # M-RoPE models (Qwen2-VL and later) give an image's rows 2-D positions; lokal's engine
            # gives every row one position.
            self.close()
            raise ProjectorError(f"{path.name} needs M-RoPE positions, which lokal does not support yet")
        self.n_embd = model.n_embd_inp
        self._lock = threading.Lock()  # one mtmd call at a time: its output buffer is the context's
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self.n_encoded = 0  # images encoded (not found in the cache)

    def prompt(self, text: str, images: list[Bitmap], add_special: bool) -> tuple[list[int], tuple[ImageSpan, ...]]:
        """Token ids (an image's positions as placeholder ids) and the images' spans, for text
        holding ``IMAGE_MARKER`` once per image, in order. ValueError if mtmd refuses them."""
        data = text.encode("utf-8", "replace")
        bitmaps: list[M.mtmd_bitmap_p] = []
        chunks = M.mtmd_input_chunks_init()
        try:
            for image in images:
                bitmaps.append(self._bitmap(image))
            with self._lock:
                inp = M.mtmd_input_text(text=data, text_len=len(data), add_special=add_special, parse_special=True)
                arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
                rc = M.mtmd_tokenize(self._ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
                if rc == 1:
                    raise ValueError(f"the prompt has {text.count(IMAGE_MARKER)} image places for "
                                     f"{len(images)} images")
                if rc != 0:
                    raise ValueError(f"the vision projector could not read the images (mtmd error {rc})")
                return self._read(chunks)
        finally:
            M.mtmd_input_chunks_free(chunks)
            for bm in bitmaps:
                M.mtmd_bitmap_free(bm)

    def _read(self, chunks: M.mtmd_input_chunks_p
              ) -> tuple[list[int], tuple[ImageSpan, ...]]:
        tokens: list[int] = []
        spans: list[ImageSpan] = []
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            kind = M.mtmd_input_chunk_get_type(chunk)
            if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ptr[: n.value] if n.value else [])
                continue
            if kind != M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise ValueError("only images are supported, not audio")
            if M.mtmd_decode_use_non_causal(self._ctx, chunk):
                raise ValueError("this projector's images need non-causal attention, which lokal does not "
                                 "support yet")
            digest = bytes.fromhex((M.mtmd_input_chunk_get_id(chunk) or b"").decode())
            n_tokens = M.mtmd_input_chunk_get_n_tokens(chunk)
            embd = self._embeddings(chunk, digest, n_tokens)
            spans.append(ImageSpan(len(tokens), embd, digest))
            tokens.extend(image_placeholders(digest, n_tokens))
        return tokens, tuple(spans)

    def _embeddings(self, chunk: M.mtmd_input_chunk_p, digest: bytes, n_tokens: int) -> np.ndarray:
        cached = self._cache.get(digest)
        if cached is not None and len(cached) == n_tokens:
            self._cache.move_to_end(digest)
            return cached
        if M.mtmd_encode_chunk(self._ctx, chunk) != 0:
            raise ValueError("the vision projector failed to encode an image")
        self.n_encoded += 1
        out = M.mtmd_get_output_embd(self._ctx)
        embd = np.ctypeslib.as_array(out, shape=(n_tokens * self.n_embd,)).reshape(n_tokens, self.n_embd).copy()
        embd.setflags(write=False)
        self._cache[digest] = embd
        self._cache_bytes += embd.nbytes
        while self._cache_bytes > EMBEDDING_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return embd

    @staticmethod
    def _bitmap(image: Bitmap) -> M.mtmd_bitmap_p:
        data = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
        bm = M.mtmd_bitmap_init(image.width, image.height, data)
        if not bm:
            raise ValueError("the image could not be handed to the vision projector")
        M.mtmd_bitmap_set_id(bm, image.digest.hex().encode())
        return bm  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._ctx:
            M.mtmd_free(self._ctx)
            self._ctx = None
