"""Embedding gradients into a reused buffer: the same gradients as torch's backward, and the same run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune_lib import FineTuner
from finetune_lib.speedups import embedding_grad
from finetune_lib.speedups.embedding_grad import reused_embedding_grads

from ..training.helpers import generation_records, model_and_tokenizer


class _Tied(nn.Module):
    """An embedding table shared with the output projection (as GPT-2 ties them)."""

    def __init__(self, vocab: int = 50, dim: int = 8, padding_idx: int | None = 0, tied: bool = True):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.mix = nn.Linear(dim, dim)
        self.tied = tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.emb(ids)))
        return (h @ self.emb.weight.T).logsumexp(-1).sum() if self.tied else h.square().sum()


def _grads(model: nn.Module, batches: list[torch.Tensor], patched: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with reused_embedding_grads(model, enabled=patched) as n:
        assert n == (1 if patched else 0)
        for ids in batches:  # micro-batches accumulate
            model(ids).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("padding_idx", [0, None])
def test_same_gradients_as_torch_including_padding_and_tied_weights(monkeypatch, padding_idx, tied):
    monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", 1)
    torch.manual_seed(0)
    model = _Tied(padding_idx=padding_idx, tied=tied)
    batches = [torch.randint(0, 50, (4, 7)), torch.randint(0, 50, (3, 5))]
    batches[0][:, -2:] = 0  # padding positions (and, with padding_idx=None, a real token 0)
    reference = _grads(model, batches, patched=False)
    for _ in range(2):  # a second step reuses the buffer: it must start from zero again
        ours = _grads(model, batches, patched=True)
        for name in reference:
            torch.testing.assert_close(ours[name], reference[name], rtol=1e-6, atol=1e-6)
    if padding_idx == 0 and not tied:  # the padding row learns nothing (tied: only from the projection)
        assert ours["emb.weight"][0].abs().sum() == 0


def test_buffer_is_reused_across_steps(monkeypatch):
    monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", 1)
    model = _Tied()
    ptrs = []
    with reused_embedding_grads(model):
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            model(torch.randint(1, 50, (2, 4))).backward()
            ptrs.append(model.emb.weight.grad.data_ptr())
    assert len(set(ptrs)) == 1


def test_frozen_table_and_no_grad_use_the_plain_forward(monkeypatch):
    monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", 1)
    model = _Tied()
    model.emb.weight.requires_grad_(False)
    with reused_embedding_grads(model):
        model(torch.randint(1, 50, (2, 4))).backward()
        with torch.no_grad():
            model(torch.randint(1, 50, (2, 4)))
    assert model.emb.weight.grad is None


def test_small_tables_and_custom_forwards_are_left_alone():
    class Scaled(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 2

    model = nn.ModuleDict({"small": nn.Embedding(10, 4), "scaled": Scaled(2048, 1024)})
    with reused_embedding_grads(model) as n:
        assert n == 0


def test_patch_is_removed_after_the_block(monkeypatch):
    monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", 1)
    model = _Tied()
    with pytest.raises(RuntimeError), reused_embedding_grads(model):
        assert "forward" in vars(model.emb)
        raise RuntimeError("boom")
    assert "forward" not in vars(model.emb)


def test_a_fit_is_the_same_with_and_without_it(monkeypatch):
    """A tied GPT-2 trained a few steps: the same losses and weights either way (fp32, one process)."""
    monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", 1)
    records = generation_records(24)
    results = []
    for reuse in (False, True):
        model, tok = model_and_tokenizer("gpt2", "causal_lm", dropout=0.0)  # cpu_speedups' dropout: none to draw
        tuner = FineTuner(model, "causal_lm", tokenizer=tok, epochs=2, batch_size=8, gradient_accumulation=2,
                          precision="fp32", log_every=1, progress=False, loggers=(), cpu_speedups=reuse)
        history = tuner.fit(records)
        results.append(([h["train/loss"] for h in history if "train/loss" in h],
                        tuner.model.get_input_embeddings().weight.detach().clone()))
        assert "forward" not in vars(tuner.model.get_input_embeddings())
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
