"""A model in memory: its manifest, its chat template, and the engine that serves it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal.advise.offload import OffloadPlan
from lokal.engine.async_engine import AsyncEngine
from lokal.engine.draft import DraftModel
from lokal.engine.embedder import Embedder, EmbedResult
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel, LoraAdapter, Offload
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Adapters, ImageSpan
from lokal.engine.speculate import Speculation
from lokal.engine.vision import IMAGE_MARKER, Bitmap, Projector
from lokal.options import SAMPLING_NAMES, from_ollama
from lokal.runtime.errors import ContextLengthExceeded, InvalidRequest
from lokal.store.create import prepare_template
from lokal.store.manifest import Manifest
from lokal.templates.chat_template import ChatTemplate


@dataclass
class LoadedModel:
    """Prompt building and generation for one loaded model."""

    name: str
    manifest: Manifest
    model: LlamaModel
    engine: Engine
    runner: AsyncEngine | None  # the engine thread; None when the caller steps the engine itself
    template: ChatTemplate
    defaults: dict[str, Any] = field(default_factory=dict)
    embedder: Embedder | None = None  # its llama.cpp context is made on the first embed
    memory_bytes: int | None = None  # lokal's estimate, made once (Runtime.memory_bytes)
    plan: OffloadPlan | None = None  # where its bytes went (VRAM, RAM); None: not planned (loaded by hand)
    vision: Projector | None = None  # its vision projector: it accepts images
    adapters: Adapters = ()  # its LoRA adapters (on ``model``), which its every sequence is decoded with
    host: LoadedModel | None = None  # the model whose weights and engine it shares (a LoRA model's base)

    @classmethod
    def load(cls, name: str, manifest: Manifest, path: Path, shape: ContextShape,
             max_queue: int, prefix_cache: bool, start_thread: bool = True,
             prefix_cache_ram_mib: int = 0, speculate: str = "off", draft: Path | None = None,
             offload: Offload | None = None, projector: Path | None = None,
             adapters: Sequence[tuple[Path, float]] = ()) -> LoadedModel:
        """Load weights and start the engine thread (blocking: call it off the event loop). ``draft``:
        a draft model's GGUF (DraftMismatch if it cannot draft for this one); ``offload``: its GPU
        layers (None: the CPU); ``projector``: its vision projector's GGUF (ProjectorError if mtmd
        cannot use it with this model); ``adapters``: LoRA adapters' GGUFs and scales (ModelLoadError)."""
        model = LlamaModel(path, shape, offload)
        try:
            loras = tuple((model.load_adapter(file), scale) for file, scale in adapters)
            vision = Projector(projector, model) if projector is not None else None
            drafter = DraftModel(draft, model) if draft is not None else None
        except BaseException:
            model.close()
            raise
        engine = Engine(model, max_queue=max_queue, prefix_cache=prefix_cache,
                        host_prefix_bytes=prefix_cache_ram_mib * 2**20, speculation=Speculation(speculate),
                        draft=drafter)
        runner = AsyncEngine(engine, name=f"engine:{name}") if start_thread else None
        return cls(name, manifest, model, engine, runner, _template(manifest, model), _defaults(manifest),
                   Embedder(model), vision=vision, adapters=loras)

    @classmethod
    def guest(cls, name: str, manifest: Manifest, host: LoadedModel, adapters: Sequence[tuple[Path, float]]
              ) -> LoadedModel:
        """A LoRA model served by ``host``'s weights and engine (its base, already loaded): only its
        adapters are loaded (blocking; ModelLoadError if llama.cpp refuses one). Its requests share
        the host's batches; the scheduler decodes them in steps of their own (docs/engine.md)."""
        loras: list[tuple[LoraAdapter, float]] = []
        try:
            for file, scale in adapters:
                loras.append((host.model.load_adapter(file), scale))
        except BaseException:
            for adapter, _ in loras:
                host.unload_adapter(adapter)
            raise
        return cls(name, manifest, host.model, host.engine, host.runner, _template(manifest, host.model),
                   _defaults(manifest), adapters=tuple(loras), host=host,
                   memory_bytes=sum(a.size for a in manifest.adapters))

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Free one of the adapters on this model's weights, on its engine thread when it has one."""
        if self.runner is not None:
            self.runner.unload_adapter(adapter)
        else:
            self.engine.unload_adapter(adapter)

    @property
    def embedding_length(self) -> int:
        return self.embedder.n_embd if self.embedder is not None else 0

    @property
    def context_length(self) -> int:
        return self.model.shape.slot_ctx

    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """Canonical options: the request's over the model's defaults; None means 'not given'."""
        return {**self.defaults, **{k: v for k, v in request.items() if v is not None}}

    def sampling(self, merged: dict[str, Any] | None = None, grammar: str | None = None) -> SamplingParams:
        """The sampler's settings for options already merged by ``options()`` (None: the model's
        defaults), lokal's under those. Raises pydantic's ValidationError for a value out of range."""
        fields = {k: v for k, v in (self.defaults if merged is None else merged).items() if k in SAMPLING_NAMES}
        if grammar is not None:
            # Checked and compiled here, on a worker thread: the first grammar builds the model's
            # vocabulary for llguidance (seconds for 262k tokens), a large one takes a while to
            # compile; the engine's own check on the event loop then finds it done.
            try:
                self.model.check_grammar(grammar)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="grammar", code="invalid_grammar") from exc
        return SamplingParams(**fields, grammar=grammar)

    def with_system(self, messages: list[dict[str, Any]], turns: bool = True) -> list[dict[str, Any]]:
        """The model's system prompt first unless the chat has one, then (``turns``) its Modelfile
        MESSAGE turns, before the chat."""
        if self.manifest.system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": self.manifest.system}, *messages]
        if turns and self.manifest.messages:
            lead = 1 if messages and messages[0].get("role") == "system" else 0
            messages = [*messages[:lead], *self.manifest.messages, *messages[lead:]]
        return messages

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    template: str | None = None, max_tokens: int | None = None,
                    variables: dict[str, Any] | None = None, add_generation_prompt: bool = True) -> list[int]:
        """Render messages through the chat template (or a request's own, Jinja or Go) and
        tokenize. Raises TemplateError, or ModelfileError for a template that cannot be used.
        ``variables``: more for the template to read (``enable_thinking``)."""
        return self.chat_prompt_with_images(messages, [], tools, template, max_tokens, variables,
                                            add_generation_prompt)[0]

    def chat_prompt_with_images(
        self, messages: list[dict[str, Any]], images: list[Bitmap], tools: list[dict[str, Any]] | None = None,
        template: str | None = None, max_tokens: int | None = None, variables: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> tuple[list[int], tuple[ImageSpan, ...]]:
        """``chat_prompt`` for messages whose text holds ``IMAGE_MARKER`` once per image (in
        order): the tokens, and the images' spans from the vision projector (ValueError if the
        template lost an image, or the projector refuses one)."""
        if template is None:
            text = self.template.render(self.with_system(messages), add_generation_prompt=add_generation_prompt,
                                        tools=tools, variables=variables)
        else:
            own = ChatTemplate(prepare_template(template), self.model.bos_text, self.model.eos_text)
            text = own.render(self.with_system(messages, turns=False), add_generation_prompt=add_generation_prompt,
                              variables=variables)
        if not images:
            return self.formatted_prompt(text, max_tokens), ()
        if self.vision is None:
            raise InvalidRequest(f"model {self.name} does not accept images", param="messages",
                                 code="images_not_supported")
        if text.count(IMAGE_MARKER) != len(images):
            raise ValueError(f"the chat template kept {text.count(IMAGE_MARKER)} of the {len(images)} images")
        self.check_length(text, max_tokens)
        add_bos = self.model.add_bos and not (self.model.bos_text and text.startswith(self.model.bos_text))
        return self.vision.prompt(text, images, add_special=add_bos)

    def formatted_prompt(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Tokenize text already in the model's format: special tokens parsed, BOS added if the
        model wants one and the text does not start with it."""
        self.check_length(text, max_tokens)
        add_bos = self.model.add_bos and not (self.model.bos_text and text.startswith(self.model.bos_text))
        return self.model.tokenize(text, add_special=add_bos, parse_special=True)

    def text_prompt(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Tokenize a raw completion prompt (BOS added if the model wants one)."""
        self.check_length(text, max_tokens)
        return self.model.tokenize(text, add_special=True, parse_special=False)

    def check_length(self, text: str, max_tokens: int | None) -> None:
        """Refuse text that must be more than ``max_tokens`` tokens, before tokenizing it: no token
        is longer than the vocabulary's longest, so a megabyte prompt costs no tokenizer time."""
        if max_tokens is None:
            return
        longest = self.model.max_token_bytes()
        n_bytes = len(text.encode("utf-8", "replace")) if len(text) * 4 > max_tokens * longest else 0
        at_least = -(-n_bytes // longest)
        if at_least > max_tokens:
            raise ContextLengthExceeded(f"prompt is at least {at_least} tokens ({n_bytes} bytes), more than the "
                                        f"{max_tokens} this request may use", param="messages")

    def fim_prompt(self, prefix: str, suffix: str, max_tokens: int | None = None) -> list[int] | None:
        """Fill-in-the-middle tokens as llama.cpp's /infill lays them out (prefix, suffix, middle:
        BOS if the model wants one, FIM_PRE prefix FIM_SUF suffix FIM_MID); None if the model's
        vocabulary has no FIM tokens."""
        fim = self.model.fim_tokens()
        if fim is None:
            return None
        self.check_length(prefix + suffix, max_tokens)
        pre, suf, mid = fim
        bos = self.model.tokenize("", add_special=True, parse_special=False)  # [BOS] or []
        return [*bos, pre, *self.plain_tokens(prefix), suf, *self.plain_tokens(suffix), mid]

    def plain_tokens(self, text: str) -> list[int]:
        """Tokens of generated text (no BOS, no special-token parsing)."""
        return self.model.tokenize(text, add_special=False, parse_special=False) if text else []

    def embed(self, texts: Sequence[str | Sequence[int]], truncate: bool = True,
              normalize: bool = True) -> EmbedResult:
        """Pooled embeddings of texts (or token id lists), L2-normalized unless asked otherwise.
        Blocking, and safe beside generation: call it off the event loop. Raises InputTooLong
        (truncate=False) or ValueError (an empty input, an unknown token id)."""
        if self.embedder is None:
            self.embedder = Embedder(self.model)
        return self.embedder.embed(texts, truncate=truncate, normalize=normalize)

    def close(self) -> None:
        """Free what this model holds; a guest (``host``) frees only its adapters and embedder."""
        if self.host is not None:
            for adapter, _ in self.adapters:
                self.host.unload_adapter(adapter)
            if self.embedder is not None:
                self.embedder.close()
            return
        if self.vision is not None:  # before the model it reads from is freed
            self.vision.close()
        if self.embedder is not None:
            self.embedder.close()  # before the model it borrows is freed
        if self.runner is not None:
            self.runner.close()  # stops the thread, then frees the model (and its draft model)
        else:
            self.engine.close()


def _template(manifest: Manifest, model: LlamaModel) -> ChatTemplate:
    """The model's chat template: its Modelfile's, else the GGUF's (else one for its architecture)."""
    source = manifest.template or model.chat_template()
    return ChatTemplate.for_model(source, model.architecture, model.bos_text, model.eos_text)


def _defaults(manifest: Manifest) -> dict[str, Any]:
    """Modelfile parameters, as canonical options (num_predict -1: no limit, as in Ollama's runner)."""
    return {k: v for k, v in from_ollama(manifest.parameters or {}, prefix="parameters.").items() if v is not None}
