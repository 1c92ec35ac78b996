"""CPU training steps of short sequences use SDPA's math kernel; evaluation and long batches keep torch's."""

from __future__ import annotations

import pytest
import torch

from finetune_lib import Callback, FineTuner
from finetune_lib.training import cpu_attention
from finetune_lib.training.cpu_attention import MATH_MAX_LENGTH, training_attention

from .helpers import classification_records, generation_records, model_and_tokenizer


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


# ---- attention dropout with the counter-based mask ---------------------------------------------------
def _reference(q, k, v, p, mask, attn_mask=None, is_causal=False, low=None):
    """torch's math kernel given the same keep mask (its scale is 1/(1-p); ours the exact inverse)."""
    from finetune_lib.training.fast_dropout import keep_mask

    keep, scale = keep_mask(mask, p)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # the aten op adds masks as they are
        attn_mask = torch.where(attn_mask, 0.0, float("-inf"))
    if low is not None:
        q, k, v = (t.to(low) for t in (q, k, v))
        attn_mask = attn_mask.to(low) if attn_mask is not None else None
    out = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask, p, is_causal, keep)[0]
    return out * ((1 - p) * scale)


def _masked_row(gen: torch.Generator) -> torch.Tensor:
    """A boolean mask with fully masked query rows: torch's math kernel gives them zeros (safe softmax)."""
    mask = torch.rand(3, 1, 7, 7, generator=gen) > 0.3
    mask[0, 0, 2] = False
    mask[2, 0, 6] = False
    return mask


@pytest.mark.filterwarnings("ignore:Dropout mask")
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "masked_row"])
@pytest.mark.parametrize("low", [None, torch.bfloat16])
def test_math_attention_is_torchs_math_kernel_with_the_counter_mask(kind, low):
    from finetune_lib.training.cpu_attention import math_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 16, generator=gen, requires_grad=True) for _ in range(3))
    extra = {"bool": {"attn_mask": torch.rand(3, 1, 7, 7, generator=gen) > 0.3},
             "float": {"attn_mask": torch.randn(3, 1, 7, 7, generator=gen)},
             "causal": {"is_causal": True}, "none": {}, "masked_row": {"attn_mask": _masked_row(gen)}}[kind]
    torch.manual_seed(11)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low is not None):
        ours = math_attention(q, k, v, dropout_p=0.2, **extra)
    ours.float().square().sum().backward()
    ours_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(11)
    ref = _reference(q, k, v, 0.2, (3, 4, 7, 7), low=low, **extra)
    ref.float().square().sum().backward()
    assert ours.dtype == (low or torch.float32)
    tol = {"atol": 1e-5, "rtol": 1e-5} if low is None else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(ours.float(), ref.float(), **tol)
    for mine, theirs in zip(ours_grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, theirs, **({"atol": 1e-4, "rtol": 1e-4} if low is None else
                                                   {"atol": 0.25, "rtol": 5e-2}))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=low is not None):
        undropped = torch.nn.functional.scaled_dot_product_attention(q, k, v, **extra)
    assert not torch.allclose(ours.float(), undropped.float(), **tol)  # dropout happened
    if kind == "masked_row":
        assert (ours[0, :, 2] == 0).all() and (ours[2, :, 6] == 0).all() and not ours.isnan().any()


def test_math_attention_passes_other_calls_to_torch():
    from finetune_lib.training.cpu_attention import math_attention

    q = k = v = torch.randn(2, 2, 5, 8)
    torch.manual_seed(0)
    assert torch.equal(math_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(RuntimeError):  # torch refuses a mask with is_causal; so do we
        math_attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool), dropout_p=0.1, is_causal=True)


def test_fit_draws_attention_dropout_with_the_counter_mask_only_while_training(monkeypatch):
    calls = []
    original = cpu_attention.math_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dropout_p", 0.0))
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_attention, "math_attention", counting)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run(fast: bool) -> list[float]:
        calls.clear()
        model, tok = model_and_tokenizer("bert", "classification", dropout=0.2)
        tuner = FineTuner(model, "classification", tokenizer=tok, epochs=1, batch_size=8, precision="fp32",
                          log_every=1, progress=False, loggers=(), cpu_fast_dropout=fast)
        history = tuner.fit(classification_records(16), validation=classification_records(8, seed=1))
        assert torch.nn.functional.scaled_dot_product_attention is sdpa  # restored
        return [h["train/loss"] for h in history if "train/loss" in h]

    first = run(True)
    assert calls and all(p == pytest.approx(0.2) for p in calls)  # training forwards only (evaluation: torch's)
    assert run(True) == first  # seeded
    run(False)
    assert not calls
