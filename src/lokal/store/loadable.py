"""Whether llama.cpp can load a GGUF file, checked from its header before the file enters the store.

A GGUF file can be well formed and still be refused by llama.cpp: an architecture it does not
know, or hyperparameters it cannot build a graph from (no attention heads, no layers). Storing
such a file would only move the failure to the first chat, as a server error. The checks below
are the ones llama.cpp's loader makes before it touches the weights (``llama_model_loader`` and
``llama_model::load_hparams`` in ``src/llama-model.cpp``), measured against the library lokal
ships: an unknown ``general.architecture`` ("unknown model architecture"), a missing or zero
``<arch>.embedding_length`` / ``<arch>.block_count`` ("key not found", or an abort for zero
layers), a missing ``<arch>.context_length``, and zero attention heads or KV heads (tensor shapes
that cannot match).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from lokal.store.errors import InvalidGguf
from lokal.store.gguf_facts import ArraySummary, GgufFacts, read_gguf_facts

# LLM_ARCH_NAMES of llama.cpp (src/llama-arch.cpp), as compiled into the llama-cpp-python wheel lokal
# pins (0.3.36+lokal.2, libllama.so.0.5.0). The names are read from that library, where the
# map's strings lie in order between "clip" and "(unknown)"; "bert", "qwen", "qwen2", "glm4" and
# "rwkv7", in upstream llama.cpp's map at those places, are stored as the tails of longer strings
# ("modern-bert", "deepseek-r1-qwen", "rwkv6qwen2", "chatglm4", "arwkv7": the linker merges them).
# tests/unit/store/test_store_hostile.py checks this list against the installed library, so an
# upgrade of llama-cpp-python that adds or drops an architecture fails there until it is updated.
LLAMA_CPP_ARCHITECTURES: frozenset[str] = frozenset(
    """
    clip llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert
    modern-bert nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom stablelm
    qwen qwen2 qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp
    phi2 phi3 phimoe plamo plamo2 plamo3 codeshell orion internlm2 minicpm minicpm3 gemma gemma2
    gemma3 gemma3n gemma4 gemma4-assistant gemma-embedding starcoder2 mamba mamba2 maple jamba
    falcon-h1 xverse command-r cohere2 cohere2moe dbrx olmo olmo2 olmoe muse-glimmer openelm arctic
    deepseek deepseek2 deepseek2-ocr deepseek32 deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5
    t5encoder jais jais2 nemotron nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6
    rwkv6qwen2 rwkv7 arwkv7 granite granitemoe granitehybrid graniteswitch granite_swa chameleon
    wavtokenizer-dec plm bailingmoe bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna
    ernie4_5 ernie4_5-moe hunyuan-moe hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2
    lfm2moe dream smallthinker llada llada-moe seed_oss grovemoe apertus minimax-01 hrm_text
    minimax-m2 minimax-m3 cogvlm rnd1 pangu-embedded mistral3 eagle3 dflash mistral4 paddleocr mimo2
    step35 spark2_5 llama-embed maincoder kimi-linear kimi-k3 glm5-next talkie mellum nanbeige
    qwen3tts pockettts
    """.split()
)

# Known to llama.cpp but not as a model of its own: "clip" is the architecture of multimodal
# projectors (mmproj files), which llama.cpp refuses as a main model.
NOT_A_MODEL = {"clip": "a multimodal projector (mmproj file), not a language model"}

# Architectures without attention (state-space and RWKV models, the WavTokenizer decoder): llama.cpp
# reads no head count, or 0, as "no attention" (their converters write 0). Every other one needs heads.
NO_ATTENTION: frozenset[str] = frozenset(
    {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "wavtokenizer-dec"}
)


# The special tokens llama.cpp's vocabulary loader reads (llama_vocab::impl::load), and the ids it falls back
# to per tokenizer model when a file names none or one outside the vocabulary. A tokenizer that then
# meets an id past the vocabulary's end aborts the process (GGML_ASSERT), so such files are refused.
SPECIAL_TOKEN_KEYS = ("bos", "eos", "unknown", "seperator", "padding", "mask")  # llama.cpp's spelling
SPECIAL_TOKEN_DEFAULTS: dict[str, dict[str, int]] = {
    "llama": {"bos": 1, "eos": 2, "unknown": 0},
    "bert": {"bos": 101, "unknown": 100, "seperator": 102, "padding": 0, "mask": 103},
    "gpt2": {"bos": 11, "eos": 11},
    "t5": {"eos": 1, "unknown": 2, "padding": 0},
}


class UnloadableGguf(InvalidGguf):
    """A well-formed GGUF file that llama.cpp cannot load as a model; ``reason`` says why."""

    def __init__(self, what: str | Path, reason: str) -> None:
        super().__init__(f"{what} cannot be loaded by llama.cpp: {reason}")
        self.reason = reason


def loadability_problem(facts: GgufFacts) -> str | None:
    """Why llama.cpp cannot load a GGUF with these facts, in one line; None when it can."""
    arch = facts.architecture
    if not arch:
        return "general.architecture is missing"
    if arch not in LLAMA_CPP_ARCHITECTURES:
        close = difflib.get_close_matches(arch, sorted(LLAMA_CPP_ARCHITECTURES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown architecture '{arch[:64]}' (general.architecture){hint}"
    if arch in NOT_A_MODEL:
        return f"architecture '{arch}' is {NOT_A_MODEL[arch]}"
    required: list[tuple[str, int | None, bool]] = [
        ("embedding_length", facts.embedding_length, True),
        ("block_count", facts.block_count, True),
        ("context_length", facts.context_length, False),
        ("attention.head_count", facts.head_count, True),
        ("attention.head_count_kv", facts.head_count_kv, True),
    ]
    for key, value, positive in required:
        if key.startswith("attention.") and arch in NO_ATTENTION:
            continue  # their converters write 0 heads, or none
        if value is None:
            if key == "attention.head_count_kv":
                continue  # optional: it defaults to head_count
            return f"{arch}.{key} is missing"
        if value < 0 or (positive and value == 0):
            return f"{arch}.{key} is {value}; llama.cpp needs a positive number"
    if facts.tensor_count == 0:
        return "the file has no tensors (no weights to load)"
    return _special_token_problem(facts)


def _special_token_problem(facts: GgufFacts) -> str | None:
    """A special token llama.cpp would use that lies outside the vocabulary, in one line; else None."""
    tokens = facts.metadata.get("tokenizer.ggml.tokens")
    model = facts.metadata.get("tokenizer.ggml.model")
    n_vocab = tokens.length if isinstance(tokens, ArraySummary) else len(tokens) if isinstance(tokens, list) else None
    if n_vocab is None or not isinstance(model, str):
        return None
    defaults = SPECIAL_TOKEN_DEFAULTS.get(model, {})
    for name in SPECIAL_TOKEN_KEYS:
        given = facts.metadata.get(f"tokenizer.ggml.{name}_token_id")
        token = given if isinstance(given, int) and not isinstance(given, bool) and 0 <= given < n_vocab else None
        if token is None:
            token = defaults.get(name)  # llama.cpp's fallback for a missing or out-of-range id
        if token is not None and token >= n_vocab:
            said = f" (the file says {given})" if given is not None else ""
            return (f"its {name} token would be id {token}{said}, outside its vocabulary of {n_vocab} tokens "
                    f"(tokenizer.ggml.model '{model[:32]}')")
    return None


def check_loadable(facts: GgufFacts, what: str | Path) -> GgufFacts:
    """``facts``, or :class:`UnloadableGguf` ``<what> cannot be loaded by llama.cpp: <reason>``."""
    problem = loadability_problem(facts)
    if problem is not None:
        raise UnloadableGguf(what, problem)
    return facts


def read_loadable_gguf_facts(path: Path | str) -> GgufFacts:
    """The facts of the GGUF file at ``path`` once it is known llama.cpp can load it.

    Raises :class:`InvalidGguf` for a file that is not GGUF, and its subclass
    :class:`UnloadableGguf` for one llama.cpp would refuse.
    """
    return check_loadable(read_gguf_facts(path), path)
