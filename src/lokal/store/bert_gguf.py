"""Write a GGUF that llama.cpp loads from a Hugging Face BERT folder (``config.json``,
``model.safetensors``, ``vocab.txt``; a sentence-transformers model such as all-MiniLM-L6-v2).

What llama.cpp's own ``convert_hf_to_gguf.py`` (class ``BertModel``) does, without torch or
transformers: safetensors are read with numpy, tensor names mapped with gguf-py's
``TensorNameMap``, the WordPiece vocabulary written in llama.cpp's "phantom space" form (``##ing``
becomes ``ing``, a word start gets ``▁``). Matrices are stored as F16 and everything else as F32,
as the converter's default does. The output is the same bytes for the same input, so a catalog
entry can pin its sha256."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lokal.store.errors import PullError

DIGESTS_MADE_WITH_GGUF = "0.19.0"  # the gguf package that wrote the catalog's converted GGUFs
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}
_SPECIAL = ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
_DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# sentence-transformers' Pooling config → llama.cpp's pooling type
_POOLING = {"pooling_mode_mean_tokens": gguf.PoolingType.MEAN, "pooling_mode_cls_token": gguf.PoolingType.CLS}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a numpy array (a memory map: nothing is copied)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise PullError(f"{path.name}: tensor {name} has dtype {info['dtype']}, which lokal cannot convert")
        start, end = info["data_offsets"]
        tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
    return tensors


def _pooling(folder: Path) -> gguf.PoolingType:
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return gguf.PoolingType.CLS  # a plain BERT: its [CLS] state, as transformers' pooler reads
    modes = json.loads(config.read_text())
    for key, pooling in _POOLING.items():
        if modes.get(key):
            return pooling
    raise PullError(f"{config}: no pooling mode llama.cpp has (mean or cls)")


def _vocab(folder: Path) -> tuple[list[str], list[gguf.TokenType], dict[str, int]]:
    """vocab.txt in llama.cpp's WPM form, each token's type (special ones CONTROL), and the ids
    of BERT's special tokens (``[CLS]``, ``[SEP]``, …)."""
    words = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    ids = {word: i for i, word in enumerate(words) if word in _SPECIAL}
    missing = [word for word in _SPECIAL if word not in ids]
    if missing:
        raise PullError(f"{folder}: vocab.txt lacks {', '.join(missing)}")
    tokens, types = [], []
    for word in words:
        if word in ids:  # as the Hugging Face tokenizer's special added tokens
            tokens.append(word)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(word[2:] if word.startswith("##") else "\u2581" + word)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, ids


def convert_bert(folder: Path, dest: Path, name: str) -> None:
    """Write ``dest``, a GGUF of the BERT model in ``folder``, named ``name`` in its metadata.
    Raises PullError for a folder that is not a BERT model lokal can convert."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise PullError(f"{folder}: no readable config.json ({e})") from e
    if config.get("model_type") != "bert":
        raise PullError(f"{folder}: model_type is {config.get('model_type')!r}, not 'bert'")
    n_layers = int(config["num_hidden_layers"])
    arch = gguf.MODEL_ARCH.BERT
    writer = gguf.GGUFWriter(dest, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layers)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(folder))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokens, types, special = _vocab(folder)
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")  # llama.cpp's WPM tokenizer splits words itself
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # [CLS] text [SEP], as the Hugging Face tokenizer's post-processor writes a sequence
    writer.add_bos_token_id(special["[CLS]"])
    writer.add_eos_token_id(special["[SEP]"])
    writer.add_unk_token_id(special["[UNK]"])
    writer.add_sep_token_id(special["[SEP]"])
    writer.add_pad_token_id(special["[PAD]"])
    writer.add_mask_token_id(special["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)

    names = gguf.TensorNameMap(arch, n_layers)
    for hf_name, array in read_safetensors(folder / "model.safetensors").items():
        hf_name = hf_name.removeprefix("bert.")
        if hf_name in _DROPPED or hf_name.startswith("cls."):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise PullError(f"{folder}: cannot map tensor {hf_name} to llama.cpp's BERT")
        # F16 for matrices (not the token-type table, which llama.cpp adds in F32), F32 otherwise
        f16 = array.ndim == 2 and new_name != "token_types.weight"
        writer.add_tensor(new_name, np.ascontiguousarray(array, dtype=np.float16 if f16 else np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
