"""Helpers for the freezing tests: batches for tiny models, a fake FineTuner, a hand-written loop."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from finetune_lib.events import TrainState
from finetune_lib.training.optim import add_parameter_groups, parameter_groups

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (architecture, task) pairs of testing.ARCHITECTURES with the task heads each supports.
ARCH_TASKS = [
    ("gpt2", "causal_lm"),
    ("gpt2", "classification"),
    ("llama", "causal_lm"),
    ("llama", "classification"),
    ("bert", "classification"),
    ("t5", "seq2seq"),
    ("t5", "classification"),
]


def make_batch(task: str, batch_size: int = 2, length: int = 8, seed: int = 0, vocab: int = 400) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, vocab, (batch_size, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "classification":
        ids[:, -1] = 3  # </s>: T5's classification head reads the last <eos>
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=g)
    elif task == "causal_lm":
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(7, vocab, (batch_size, 5), generator=g)
    return batch


class FakeTuner:
    """What LayerFreezer needs of the FineTuner: an optimizer built from the trainable parameters and
    `add_trainable_parameters(names)`, which adds groups as the lead's FineTuner does."""

    def __init__(self, model, freezer=None, lr: float = 1e-3, weight_decay: float = 0.0):
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.lr_scale = freezer.lr_scale if freezer is not None else None
        self.optimizer = torch.optim.AdamW(parameter_groups(model, lr, weight_decay, lr_scale=self.lr_scale))
        self.added: list[list[str]] = []
        self.task = SimpleNamespace(label_smoothing=0.0)

    def add_trainable_parameters(self, names: list[str]) -> None:
        self.added.append(list(names))
        groups = parameter_groups(self.model, self.lr, self.weight_decay, lr_scale=self.lr_scale, names=names)
        add_parameter_groups(self.optimizer, groups, 1.0)

    def optimizer_names(self) -> list[list[str]]:
        return [list(g["names"]) for g in self.optimizer.param_groups]


def train(model, task: str, steps: int = 3, callbacks=(), tuner=None, lr: float = 1e-2):
    """Hand-written loop: AdamW over the trainable parameters, `steps` optimizer steps."""
    tuner = tuner or FakeTuner(model, lr=lr)
    state = TrainState(parameter_adder=tuner.add_trainable_parameters, model=model, optimizer=tuner.optimizer)
    model.train()
    for step in range(steps):
        state.batch = make_batch(task, seed=step)
        state.outputs = model(**state.batch)
        state.loss = state.outputs.loss
        for cb in callbacks:
            cb.on_loss_computed(state)
        tuner.optimizer.zero_grad()
        state.loss.backward()
        tuner.optimizer.step()
        state.step = step + 1
        for cb in callbacks:
            cb.on_optimizer_step(state)
            cb.on_batch_end(state)
    return state


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
    return SimpleNamespace(make_batch=make_batch, FakeTuner=FakeTuner, train=train, ARCH_TASKS=ARCH_TASKS)
