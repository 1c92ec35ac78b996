"""Fast dropout on a CPU: dropout's distribution and gradient, reproducible, and applied only in fit
with `cpu_speedups=True`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from finetune_lib import FineTuner
from finetune_lib.speedups import fast_dropout as fast_dropout_module
from finetune_lib.speedups.fast_dropout import dropout, fast_dropout, keep_mask, random_bits16

from ..training.helpers import classification_records, model_and_tokenizer


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale(p):
    torch.manual_seed(0)
    mask, scale = keep_mask((1000, 1000), p)
    kept = round((1 - p) * 65536) / 65536
    assert scale == pytest.approx(1 / kept, rel=1e-12)
    assert abs(kept - (1 - p)) < 1e-5
    sigma = math.sqrt(kept * (1 - kept) / mask.numel())
    assert abs(mask.float().mean().item() - kept) < 5 * sigma


def test_bits_are_uniform_and_uncorrelated():
    bits = random_bits16(1 << 20, key=12345).numpy().astype(np.int64) + 32768
    for values, bins in ((bits >> 8, 256), (bits & 0xFF, 256)):  # high and low byte: chi-square test
        counts = np.bincount(values, minlength=bins)
        expected = len(values) / bins
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < bins + 6 * math.sqrt(2 * bins)  # ~6 sigma above the mean of a chi-square(255)
    x = bits.astype(np.float64)
    for lag in (1, 2, 3, 4, 5, 8, 384):  # entries from one 64-bit value (lags 1-3) and across values
        assert abs(np.corrcoef(x[:-lag], x[lag:])[0, 1]) < 0.01
    other = random_bits16(1 << 20, key=12346).numpy().astype(np.float64)  # adjacent keys: independent
    assert abs(np.corrcoef(x, other)[0, 1]) < 0.01


def _splitmix64_reference(key: int, i: int) -> int:
    """SplitMix64's output for counter key + i * gamma, in Python integers (Steele, Lea, Flood 2014)."""
    mask = (1 << 64) - 1
    z = (key + i * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize("key", [0, 12345, -(1 << 62), (1 << 62) - 1])
def test_bits_are_splitmix64_outputs(key):
    count = 4 * 37 + 3  # not a multiple of 4: the last 64-bit value is cut
    bits = random_bits16(count, key)
    expected = []
    for i in range((count + 3) // 4):
        z = _splitmix64_reference(key % (1 << 64), i)
        expected += [(z >> (16 * j)) & 0xFFFF for j in range(4)]  # little-endian int16 lanes
    expected = [v - (1 << 16) if v >= 1 << 15 else v for v in expected[:count]]
    assert bits.dtype == torch.int16 and bits.tolist() == expected


def test_expected_value_and_gradient_are_dropouts():
    torch.manual_seed(0)
    x = torch.randn(64, 1024, requires_grad=True)
    out = dropout(x, 0.2)
    kept = out != 0
    scale = 65536 / round(0.8 * 65536)
    torch.testing.assert_close(out[kept], (x * scale)[kept])  # kept entries scaled, the rest zero
    ones = dropout(torch.ones(1_000_000), 0.2)
    assert abs(ones.mean().item() - 1.0) < 5 * math.sqrt(0.2 / 0.8 / 1e6)  # expected value unchanged
    grad = torch.randn_like(x)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad * scale, 0))


def test_dtype_and_shape_are_kept_and_identity_outside_training():
    x = torch.randn(4, 5, 6, dtype=torch.bfloat16)
    out = dropout(x, 0.1)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    assert (dropout(x, 1.0) == 0).all()


def test_seeded_draws_repeat_and_do_not_depend_on_threads():
    threads = torch.get_num_threads()
    masks = []
    try:
        for n in (1, threads, 1):
            torch.set_num_threads(n)
            torch.manual_seed(7)
            masks.append((keep_mask((300, 301), 0.1)[0], keep_mask((300, 301), 0.1)[0]))
    finally:
        torch.set_num_threads(threads)
    for first, second in masks[1:]:
        assert torch.equal(first, masks[0][0]) and torch.equal(second, masks[0][1])
    assert not torch.equal(masks[0][0], masks[0][1])  # each call draws a new key


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        keep_mask((3,), 1.0)


def test_patches_plain_dropout_modules_only_and_removes_the_patch():
    class Custom(nn.Dropout):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), Custom(0.5), nn.Dropout(0.5, inplace=True))
    with pytest.raises(RuntimeError), fast_dropout(model) as n:
        assert n == 2 and "forward" in vars(model[1]) and "forward" not in vars(model[2])
        model.eval()
        x = torch.randn(3, 4)
        torch.testing.assert_close(model[1](x), x)  # eval mode: identity
        model.train()
        out = model[1](torch.ones(10_000))
        assert set(out.unique().tolist()) == {0.0, 2.0}  # p = 0.5: kept entries scaled by exactly 2
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in model)
    with fast_dropout(model, enabled=False) as n:
        assert n == 0


def test_fit_uses_it_with_cpu_speedups_reproducibly_and_not_by_default(monkeypatch):
    records = classification_records(32)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return keep_mask(*args, **kwargs)

    monkeypatch.setattr(fast_dropout_module, "keep_mask", counting)

    def run(fast: bool):
        calls.clear()
        model, tok = model_and_tokenizer("bert", "classification", dropout=0.3)
        tuner = FineTuner(model, "classification", tokenizer=tok, epochs=1, batch_size=8, precision="fp32",
                          log_every=1, progress=False, loggers=(), cpu_speedups=fast)
        history = tuner.fit(records)
        assert all("forward" not in vars(m) for m in tuner.model.modules())
        return [h["train/loss"] for h in history if "train/loss" in h], len(calls)

    first, fast_calls = run(True)
    again, _ = run(True)
    torch_losses, torch_calls = run(False)
    assert fast_calls > 0 and torch_calls == 0
    assert first == again  # seeded: the same masks, the same losses
    assert first != torch_losses  # other masks than torch's dropout
    assert all(math.isfinite(x) for x in first)


def test_bad_switch_is_refused():
    model, tok = model_and_tokenizer("bert", "classification")
    with pytest.raises(ValueError, match="cpu_speedups must be True or False"):
        FineTuner(model, "classification", tokenizer=tok, cpu_speedups="yes")
