"""clip_gradients: the same result as torch's clip_grad_norm_, skipping the multiply only when it is a no-op."""

import pytest
import torch

from finetune_lib.training.optim import clip_gradients


def params_with_grads(scale: float, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((7, 5), (5,), (3, 4, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    params.append(torch.nn.Parameter(torch.zeros(3)))  # no gradient: ignored by both
    return params


@pytest.mark.parametrize("scale", [1e-3, 0.1, 10.0])  # within the limit, and beyond it
@pytest.mark.parametrize("skip", [True, False])
def test_clip_gradients_equals_torch(scale, skip):
    ours, ref = params_with_grads(scale), params_with_grads(scale)
    norm = clip_gradients(ours, 1.0, skip_when_within=skip)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert torch.equal(norm, ref_norm)
    for a, b in zip(ours, ref):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)  # bit for bit
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours if p.grad is not None]))
    assert float(after) <= 1.0 + 1e-5


def test_clip_gradients_skips_the_multiply_within_the_limit(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a, **k: calls.append(1) or real(*a, **k))
    clip_gradients(params_with_grads(1e-3), 1.0, skip_when_within=True)
    assert calls == []
    clip_gradients(params_with_grads(10.0), 1.0, skip_when_within=True)
    clip_gradients(params_with_grads(1e-3), 1.0, skip_when_within=False)
    assert calls == [1, 1]
