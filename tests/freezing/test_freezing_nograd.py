"""The frozen prefix runs without autograd and leaves the trainable gradients unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from finetune_lib.freezing import LayerFreezer
from finetune_lib.regularizers import set_dropout
from finetune_lib.testing import tiny_model

CASES = [("gpt2", "causal_lm"), ("llama", "classification"), ("bert", "classification"), ("t5", "seq2seq")]


def _grads_and_saved(model, batch):
    """Trainable gradients of one forward/backward, and how many tensors autograd saved for backward."""
    saved = []
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return grads, len(saved)


def _pair(arch, task, train_last=2):
    base = tiny_model(arch, task)
    set_dropout(base, 0.0)  # identical forward passes
    base.train()
    plain, fast = copy.deepcopy(base), copy.deepcopy(base)
    LayerFreezer(train_last=train_last, no_grad_prefix=False).apply(plain)
    freezer = LayerFreezer(train_last=train_last)
    freezer.apply(fast)
    return plain, fast, freezer


@pytest.mark.parametrize("arch,task", CASES)
def test_no_grad_prefix_same_gradients_less_graph(arch, task, helpers):
    plain, fast, freezer = _pair(arch, task)
    assert freezer.no_grad_blocks == (6 if arch == "t5" else 2)
    # make the embedding output require grad, so plain autograd records the frozen prefix too
    plain.enable_input_require_grads()
    fast.enable_input_require_grads()
    batch = helpers.make_batch(task)
    g_plain, saved_plain = _grads_and_saved(plain, batch)
    g_fast, saved_fast = _grads_and_saved(fast, batch)
    assert g_plain.keys() == g_fast.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert saved_fast < saved_plain
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("arch,task", [("llama", "causal_lm"), ("bert", "classification")])
def test_no_grad_prefix_with_activation_checkpointing(arch, task, reentrant, helpers):
    plain, fast, _ = _pair(arch, task)
    batch = helpers.make_batch(task)
    g_plain, _ = _grads_and_saved(plain, batch)
    fast.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        fast.enable_input_require_grads()  # reentrant checkpointing needs inputs that require grad
    g_fast, _ = _grads_and_saved(fast, batch)
    assert g_plain.keys() == g_fast.keys()
    for name in g_plain:
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_hooks_follow_unfreezing_and_exceptions_restore_grad_mode(helpers):
    model = tiny_model("bert", "classification")
    freezer = LayerFreezer(train_last=1, unfreeze_every=1)
    freezer.apply(model)
    assert freezer.no_grad_blocks == 3
    freezer.unfreeze_next()
    assert freezer.no_grad_blocks == 2
    freezer.remove_hooks()
    assert freezer.no_grad_blocks == 0
    freezer2 = LayerFreezer(train_last=1, freeze_embeddings=False)
    freezer2.apply(model)
    assert freezer2.no_grad_blocks == 0  # trainable embeddings: every block must backpropagate

    freezer3 = LayerFreezer(train_last=1)
    freezer3.apply(model)

    def fail(*args):
        raise RuntimeError("boom")

    handle = model.bert.encoder.layer[1].attention.register_forward_pre_hook(fail)  # inside a hooked block
    with pytest.raises(RuntimeError, match="boom"):
        model(**helpers.make_batch("classification"))
    handle.remove()
    assert torch.is_grad_enabled()


def test_hand_unfrozen_block_gets_gradients_despite_hooks(helpers):
    model = tiny_model("gpt2", "classification")
    freezer = LayerFreezer(train_last=1)
    freezer.apply(model)
    assert freezer.no_grad_blocks == 3
    for p in model.transformer.h[1].parameters():  # unfrozen by hand, below hooked block 2
        p.requires_grad_(True)
    assert freezer.no_grad_blocks == 1
    model(**helpers.make_batch("classification")).loss.backward()
    assert all(p.grad is not None for p in model.transformer.h[1].parameters())
    assert all(p.grad is not None for p in model.transformer.h[2].parameters() if p.requires_grad)
    freezer.on_fit_end(None)
    assert freezer.no_grad_blocks == 0
