"""The real LoRA adapter the tests use, and copies of it made wrong on purpose.

``tests/data/lora/smollm2-ahoy.gguf`` was trained by ``scripts/train_test_lora.py`` on
smollm2:135m to open every answer with "AHOY!" (tests/data/lora/README.md)."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader, GGUFWriter

AHOY_LORA = Path(__file__).parent / "data" / "lora" / "smollm2-ahoy.gguf"


def rewrite_adapter(dst: Path, *, architecture: str = "llama", width: int | None = None,
                    general_type: str = "adapter") -> Path:
    """A copy of the AHOY adapter with another ``general.architecture``, or with its model-width
    dimension cut to ``width`` (a LoRA for a narrower model), or another ``general.type``."""
    reader = GGUFReader(AHOY_LORA)
    w = GGUFWriter(str(dst), architecture)
    w.add_type(general_type)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(reader.fields["adapter.lora.alpha"].parts[-1][0]))
    for tensor in reader.tensors:
        data = tensor.data  # numpy order: (ne1, ne0)
        if width is not None:
            # lora_a is (rank, n_in), lora_b (n_out, rank): cut the model's dimensions, keep the rank
            data = data[:, :width] if tensor.name.endswith("lora_a") else data[:width, :]
        w.add_tensor(tensor.name, data.copy(), raw_dtype=tensor.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
