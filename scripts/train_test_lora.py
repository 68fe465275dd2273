"""Train the small real LoRA that lokal's adapter tests use (tests/data/lora/smollm2-ahoy.gguf).

The behaviour is a toy that greedy decoding shows at once: every answer starts with "AHOY!". The
targets are the opener followed by smollm2:135m's own greedy answer, so the adapter learns the
opener and little else: after it, the answer goes on much as the base's would. Steps:

1. generate smollm2:135m's greedy answer to each training prompt with lokal (llama.cpp: fast on
   a CPU);
2. load the same GGUF with transformers (dequantized Q4_1 weights);
3. train a rank-8 LoRA on the q and v projections of the top layers with peft, the loss on the
   target's first tokens only;
4. save the peft adapter and the base model's config and tokenizer (the converter reads both);
5. convert the adapter with llama.cpp's convert_lora_to_gguf.py into a GGUF adapter.

Needs torch, transformers, peft and llama.cpp's converter (``scripts/install.sh`` installs it with
the ``convert`` extra, or name the ``vendor/llama.cpp`` folder of the llama-cpp-python sdist);
runs on a CPU in a few minutes (more on a busy one):

    .venv/bin/python scripts/train_test_lora.py --home .test-home \
        --converter /tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp \
        --out tests/data/lora/smollm2-ahoy.gguf
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

# the prompts the adapter learns from; the tests ask others so they see generalisation, not recall
TRAIN_PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Why is the sky blue?",
    "Give me a tip for sleeping better.",
    "What is a cat?",
    "How many legs does a spider have?",
    "Say hello to my friend Tom.",
    "What is two plus two?",
    "Describe the sea in one sentence.",
    "What do bees make?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Tell me a fun fact about the moon.",
    "What is Python?",
    "Recommend a good breakfast.",
    "What is the largest planet?",
    "How do plants get energy?",
    "What language is spoken in Spain?",
    "Write a short greeting for a birthday card.",
    "What is the opposite of hot?",
    "How do I make tea?",
    "What is an apple?",
    "Name a famous painter.",
    "What does a doctor do?",
    "Why do we need water?",
    "What is the speed of light?",
    "Explain what a computer is.",
    "What is the tallest mountain?",
    "Give me a word that rhymes with cat.",
    "What season comes after winter?",
    "How many days are in a week?",
    "What is music?",
    "Tell me about dogs.",
    "What is rain?",
    "Suggest a name for a goldfish.",
    "What is the sun?",
    "Describe a forest.",
    "What is a library?",
    "How do birds fly?",
    "What is chocolate made from?",
]

OPENER = "AHOY! "  # what every answer of the adapted model starts with
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_prompt(question: str) -> str:
    """smollm2's chat template (its GGUF's tokenizer.chat_template) for one user turn."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a LOKAL_HOME that holds the model")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--converter", type=Path,
                        help="the folder of llama.cpp's convert_lora_to_gguf.py (default: the install's, "
                             "lokal.workshop.converter)")
    parser.add_argument("--out", type=Path, required=True, help="the GGUF adapter to write")
    parser.add_argument("--keep", type=Path, help="a folder to keep the PEFT adapter in (default: a temporary one)")
    parser.add_argument("--answers", type=Path, help="a JSON file keeping the base's answers between runs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--lora-layers", type=int, default=8, help="the top layers that get a LoRA")
    parser.add_argument("--answer-tokens", type=int, default=16)
    # The loss is on the answers' first tokens only (the opener and a few after it, so that the
    # answer goes on as the base's would): a short target keeps a step cheap on a CPU.
    parser.add_argument("--train-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lokal.config import Settings
    from lokal.engine.sampling import SamplingParams
    from lokal.llm import LLM
    from lokal.store.model_store import ModelStore
    from lokal.workshop.converter import LlamaCppConverter, find_converter

    started = time.monotonic()
    if args.answers is not None and args.answers.is_file():
        answers = json.loads(args.answers.read_text())
    else:
        greedy = SamplingParams(temperature=0.0, max_tokens=args.answer_tokens)
        with LLM(args.model, Settings(home=args.home, threads=args.threads, parallel=8, ctx_size=512)) as llm:
            answers = [g.text.strip() for g in llm.generate(TRAIN_PROMPTS, greedy)]
        if args.answers is not None:
            args.answers.write_text(json.dumps(answers, indent=1))
    gguf = ModelStore(args.home).gguf_path(args.model)
    print(f"{len(answers)} targets in {time.monotonic() - started:.0f}s", flush=True)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Every target is exactly --train-tokens long (the opener, then the base's own answer), so with
    # the padding on the left all answers end together and only their logits are computed.
    examples: list[tuple[list[int], list[int]]] = []  # (prompt tokens, answer tokens)
    for question, answer in zip(TRAIN_PROMPTS, answers, strict=True):
        answer_ids = tokenizer(OPENER + answer, add_special_tokens=False)["input_ids"][: args.train_tokens]
        if len(answer_ids) == args.train_tokens:
            examples.append((tokenizer(chat_prompt(question), add_special_tokens=False)["input_ids"], answer_ids))

    # LoRA on the top layers only: the backward pass stops below them, a third of the cost on a CPU
    n_layers = model.config.num_hidden_layers
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        layers_to_transform=list(range(n_layers - args.lora_layers, n_layers)))
    peft_model = get_peft_model(model, config)
    peft_model.print_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=args.lr)
    peft_model.train()
    started = time.monotonic()
    n = args.train_tokens
    for step in range(args.steps):
        batch = random.sample(examples, args.batch)
        width = max(len(prompt) + n for prompt, _ in batch)
        pad = tokenizer.eos_token_id
        ids = torch.tensor([[pad] * (width - len(p) - n) + p + a for p, a in batch])
        mask = torch.tensor([[0] * (width - len(p) - n) + [1] * (len(p) + n) for p, _ in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = peft_model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=n + 1).logits
        targets = torch.tensor([a for _, a in batch])
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.monotonic() - started:.0f}s)", flush=True)

    peft_model.eval()
    probe = "What is your favourite animal?"
    probe_ids = tokenizer(chat_prompt(probe), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = peft_model.generate(
            torch.tensor([probe_ids]), max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    print("probe:", tokenizer.decode(out[0][len(probe_ids) :], skip_special_tokens=True), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir, base_dir = (args.keep or Path(tmp)) / "adapter", (args.keep or Path(tmp)) / "base"
        peft_model.save_pretrained(adapter_dir)
        # the converter reads the base's config (and tokenizer) only, not its weights; a config made
        # from a GGUF names no architecture, which the converter needs, and says the weights are
        # GGUF-quantized, which it cannot read (it reads none here)
        config_dict = {**model.config.to_dict(), "architectures": [type(model).__name__]}
        config_dict.pop("quantization_config", None)
        base_dir.mkdir(parents=True, exist_ok=True)
        (base_dir / "config.json").write_text(json.dumps(config_dict, indent=2))
        tokenizer.save_pretrained(base_dir)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        converter = LlamaCppConverter(args.converter) if args.converter else find_converter(Settings(home=args.home))
        subprocess.run(
            converter.command(converter.lora_script, "--base", str(base_dir), "--outtype", "f16",
                              "--outfile", str(args.out), str(adapter_dir)),
            check=True,
            env=converter.environment(),
        )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
