"""Workload 5's peer: TRL's `SFTTrainer` with a peft `LoraConfig`, on SmolLM2 and the support conversations.

`trl_default` keeps TRL's own speed settings (bf16 on, gradient checkpointing on, no packing, padding
to the longest in the batch). `trl_tuned` turns gradient checkpointing off. Its padding-free and BFD
packing modes flatten a batch into one row and rely on flash attention to keep examples apart (TRL
warns that other attention implementations may attend across examples); on a CPU only sdpa and eager
exist, so the tuned runner keeps padding: the math stays the same as the other runners'.
The data is TRL's conversational prompt-completion form, so the loss covers the last assistant turn.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from chat_common import CHAT, LORA, conversations, plain_smollm2, prompt_completion, steps
from common import SEED, seed_all


def chat(cfg: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    path = plain_smollm2()
    records = prompt_completion(conversations(cfg["quick"]))
    n_steps = steps(cfg["quick"])

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []  # when each optimizer step ended
            self.losses: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(path)
        seed_all()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        args = SFTConfig(
            out, use_cpu=not torch.cuda.is_available(), max_steps=n_steps, per_device_train_batch_size=CHAT["batch"],
            learning_rate=CHAT["lr"], lr_scheduler_type="linear", warmup_steps=CHAT["warmup_steps"],
            max_length=CHAT["max_length"], completion_only_loss=True, logging_steps=1, report_to="none",
            save_strategy="no", seed=SEED, dataloader_num_workers=0,
            **({"gradient_checkpointing": False} if cfg["runner"] == "trl_tuned" else {}))
        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
        meter = Meter()
        trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                             processing_class=tok, peft_config=peft_config, callbacks=[meter])
        # the target tokens each example trains on, from TRL's own tokenized data
        tokenized = trainer.train_dataset
        if "completion_mask" in tokenized.column_names:
            target_tokens = [sum(m) for m in tokenized["completion_mask"]]
        else:  # TRL 1.16 builds the labels itself (-100 outside the completion)
            target_tokens = [sum(1 for x in labels if x != -100) for labels in tokenized["labels"]]
        prep_s = time.perf_counter() - t0
        trainer.train()
        wall = time.perf_counter() - t0
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "wall_s": wall, "prep_s": prep_s, "step_ends": [t - meter.ends[0] for t in meter.ends], "steps": n_steps,
        "batch": CHAT["batch"],
        "train_examples": len(records), "target_tokens_per_example": sum(target_tokens) / len(target_tokens),
        "loss_first_k": sum(meter.losses[: CHAT["loss_k"]]) / max(1, len(meter.losses[: CHAT["loss_k"]])),
        "losses": meter.losses, "trainable_params": trainable, "bf16": bool(args.bf16),
        "gradient_checkpointing": bool(args.gradient_checkpointing), "padding_free": bool(args.padding_free),
    }
