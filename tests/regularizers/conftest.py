"""Helpers for the regularizer tests: batches for tiny models and a fake FineTuner."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_batch(task: str, batch_size: int = 4, length: int = 8, seed: int = 0, vocab: int = 400) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, vocab, (batch_size, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "classification":
        ids[:, -1] = 3  # </s>: T5's classification head reads the last <eos>
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=g)
    elif task == "causal_lm":
        batch["labels"] = ids.clone()
        batch["labels"][:, :2] = -100  # an ignored prompt
    else:
        batch["labels"] = torch.randint(7, vocab, (batch_size, 5), generator=g)
    return batch


def fake_tuner(model=None):
    """The FineTuner fields the regularizers read or set."""
    return SimpleNamespace(model=model, weight_decay=0.0, task=SimpleNamespace(label_smoothing=0.0))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread pool's
    spinning makes each step ~100x slower; restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def helpers():
    return SimpleNamespace(make_batch=make_batch, fake_tuner=fake_tuner)
