"""CPU training steps of short sequences use SDPA's math kernel; evaluation and long batches keep torch's."""

from __future__ import annotations

import pytest
import torch

from finetune_lib import Callback, FineTuner
from finetune_lib.training import cpu_attention
from finetune_lib.training.cpu_attention import MATH_MAX_LENGTH, training_attention

from .helpers import generation_records, model_and_tokenizer


def _flash_allowed() -> bool:
    return torch.backends.cuda.flash_sdp_enabled()  # the global switch SDPA reads on every device


def test_short_cpu_batches_allow_only_the_math_kernel():
    short = {"input_ids": torch.zeros(4, MATH_MAX_LENGTH, dtype=torch.long), "labels": torch.zeros(4)}
    long = {"input_ids": torch.zeros(4, MATH_MAX_LENGTH + 1, dtype=torch.long)}
    assert _flash_allowed()
    with training_attention(torch.device("cpu"), short):
        assert not _flash_allowed() and torch.backends.cuda.math_sdp_enabled()
    assert _flash_allowed()
    for device, batch in ((torch.device("cpu"), long), (torch.device("meta"), short), (torch.device("cpu"), {})):
        with training_attention(device, batch):
            assert _flash_allowed()


class _Kernels(Callback):
    def __init__(self):
        self.train, self.eval = [], []

    def on_loss_computed(self, state):
        self.train.append(_flash_allowed())

    def on_eval_batch(self, state):
        self.eval.append(_flash_allowed())


def _fit(monkeypatch, max_length: int) -> tuple[list[float], _Kernels]:
    monkeypatch.setattr(cpu_attention, "MATH_MAX_LENGTH", max_length)
    model, tok = model_and_tokenizer("llama", "causal_lm")  # attention dropout 0: SDPA would pick flash
    kernels = _Kernels()
    tuner = FineTuner(model, "causal_lm", tokenizer=tok, epochs=1, batch_size=8, precision="fp32", log_every=1,
                      progress=False, loggers=(), callbacks=[kernels])
    records = generation_records(24)
    history = tuner.fit(records, validation=records[:8])  # evaluated at the epoch's end, inside fit
    return [h["train/loss"] for h in history if "train/loss" in h], kernels


def test_fit_trains_with_the_math_kernel_and_gets_the_same_losses(monkeypatch):
    losses, kernels = _fit(monkeypatch, MATH_MAX_LENGTH)
    assert kernels.train and not any(kernels.train)
    assert kernels.eval and all(kernels.eval)  # evaluation keeps torch's choice
    assert _flash_allowed()
    flash_losses, flash_kernels = _fit(monkeypatch, 0)  # every batch "long": torch's choice throughout
    assert all(flash_kernels.train)
    assert losses == pytest.approx(flash_losses, rel=1e-4)  # both kernels compute exact attention
