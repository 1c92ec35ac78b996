"""Workload 5, ours: finetune_lib at its defaults (no opt-in speed path: `cpu_speedups` is off), LoRA on
SmolLM2, the loss on the last assistant turn, the same settings as TRL's runners (`chat_common`)."""

from __future__ import annotations

import time
from typing import Any

from chat_common import CHAT, LORA, conversations, plain_smollm2, steps
from common import SEED

from finetune_lib import Callback, FineTuner, Preprocessor
from finetune_lib.adapters import LoRA


class _Steps(Callback):
    """When each optimizer step ended, and the target tokens of the batches trained on."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.targets = 0

    def on_batch_start(self, state: Any) -> None:
        labels = state.batch["labels"][:, 1:]
        self.targets += int((labels != -100).sum())

    def on_optimizer_step(self, state: Any) -> None:
        self.ends.append(time.perf_counter())


def chat(cfg: dict[str, Any]) -> dict[str, Any]:
    path = plain_smollm2()  # the same de-quantized weights as TRL's runners load
    records = conversations(cfg["quick"])
    n_steps = steps(cfg["quick"])
    meter = _Steps()
    t0 = time.perf_counter()
    tuner = FineTuner(
        str(path), task="causal_lm",
        preprocessor=Preprocessor(clean=[], max_length=CHAT["max_length"], train_on="last_assistant"),
        adapter=LoRA(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["target_modules"]),
        callbacks=[meter], max_steps=n_steps, batch_size=CHAT["batch"], learning_rate=CHAT["lr"], schedule="linear",
        warmup_steps=CHAT["warmup_steps"], log_every=1, seed=SEED, progress=False, loggers=(),
    )
    tuner.fit(records)
    wall = time.perf_counter() - t0
    losses = [r["train/loss"] for r in tuner.history if "train/loss" in r]
    features = tuner.preprocessor.encode(records, "count")
    targets = [sum(1 for x in f["labels"][1:] if x != -100) for f in features]
    return {
        "wall_s": wall, "step_ends": [t - meter.ends[0] for t in meter.ends], "steps": n_steps, "batch": CHAT["batch"],
        "train_examples": len(records), "target_tokens_per_example": sum(targets) / len(targets),
        "loss_first_k": sum(losses[: CHAT["loss_k"]]) / max(1, len(losses[: CHAT["loss_k"]])), "losses": losses,
        "trainable_params": sum(p.numel() for p in tuner.model.parameters() if p.requires_grad),
        "precision": tuner.precision.name if hasattr(tuner.precision, "name") else str(tuner.precision),
        "cpu_speedups": tuner.args.cpu_speedups, "gradient_checkpointing": tuner.args.gradient_checkpointing,
    }
