"""Frozen linears reuse one low-precision copy of their weights under autocast: the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune_lib import FineTuner, LayerFreezer
from finetune_lib.training import frozen_casts
from finetune_lib.training.frozen_casts import cached_frozen_casts, frozen_linears

from .helpers import classification_records, model_and_tokenizer


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    net[0].requires_grad_(False)
    return net


def _run(net: nn.Module, x: torch.Tensor, autocast: bool = True) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return net(x)


def test_same_outputs_and_gradients_as_autocast_and_only_frozen_layers_patched():
    net, x = _net(), torch.randn(5, 8)
    expected = _run(net, x)
    expected.float().sum().backward()
    grads = [p.grad.clone() for p in net[2].parameters()]
    net.zero_grad()
    with cached_frozen_casts(net, torch.bfloat16) as n:
        assert n == 1 and "forward" in vars(net[0]) and "forward" not in vars(net[2])
        got = _run(net, x)
        assert torch.equal(got, expected)  # bit for bit: autocast casts to the same values
        got.float().sum().backward()
        assert all(torch.equal(p.grad, g) for p, g in zip(net[2].parameters(), grads))
        assert net[0].forward.weight.dtype == torch.bfloat16
        assert _run(net, x, autocast=False).dtype == torch.float32  # no autocast: the plain layer
    assert all("forward" not in vars(m) for m in net)


def test_a_changed_weight_is_cast_again():
    net, x = _net(), torch.randn(5, 8)
    with cached_frozen_casts(net, torch.bfloat16):
        before = _run(net, x)
        cached = net[0].forward.weight
        with torch.no_grad():
            net[0].weight.mul_(2.0)  # in place: the version counter moves
            net[0].bias.add_(1.0)
        after = _run(net, x)
        assert net[0].forward.weight is not cached
        net[0].weight.data = torch.zeros_like(net[0].weight)  # new storage
        zeroed = _run(net, x)
    with torch.no_grad():
        net[0].weight.copy_(cached.float() * 2.0)
    assert not torch.equal(before, after)
    assert torch.equal(after, _run(net, x))
    assert not torch.equal(after, zeroed)


def test_a_layer_unfrozen_later_trains_through_the_plain_path():
    net, x = _net(), torch.randn(5, 8)
    with cached_frozen_casts(net, torch.bfloat16):
        _run(net, x)
        net[0].requires_grad_(True)
        _run(net, x).float().sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_budget_and_switches():
    net = _net()
    assert frozen_linears(net, max_bytes=0) == []
    assert frozen_linears(net) == [net[0]]
    for dtype, enabled in ((None, True), (torch.float32, True), (torch.bfloat16, False)):
        with cached_frozen_casts(net, dtype, enabled) as n:
            assert n == 0 and "forward" not in vars(net[0])


def _fit_losses(cache: bool, monkeypatch) -> tuple[list[float], dict]:
    monkeypatch.setattr(frozen_casts, "MAX_BYTES", (1 << 30) if cache else 0)
    counts = []
    original = frozen_casts.frozen_linears

    def counting(*args, **kwargs):
        counts.append(len(original(*args, **kwargs)))
        return original(*args, **kwargs)

    monkeypatch.setattr(frozen_casts, "frozen_linears", counting)
    model, tok = model_and_tokenizer("bert", "classification", dropout=0.1)
    tuner = FineTuner(model, "classification", tokenizer=tok, freezer=LayerFreezer(train_last=1), epochs=2,
                      batch_size=8, precision="bf16", log_every=1, progress=False, loggers=())
    history = tuner.fit(classification_records(32))
    assert all("forward" not in vars(m) for m in tuner.model.modules())
    return [h["train/loss"] for h in history if "train/loss" in h], {"layers": counts[0],
                                                                     "state": tuner.model.state_dict()}


def test_fit_with_the_cache_trains_exactly_as_without(monkeypatch):
    cached, a = _fit_losses(True, monkeypatch)
    plain, b = _fit_losses(False, monkeypatch)
    assert a["layers"] > 0 and b["layers"] == 0
    assert cached == plain
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions(dtype):
    net, x = _net(), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=dtype):
        expected = net(x)
    with cached_frozen_casts(net, dtype), torch.autocast("cpu", dtype=dtype):
        assert torch.equal(net(x), expected)
