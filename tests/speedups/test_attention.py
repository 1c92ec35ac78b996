"""Counter-dropout attention: torch's math kernel with the counter mask, reaching one model only,
through transformers' attention interface (no function of torch's replaced)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from finetune_lib import Callback, FineTuner
from finetune_lib.speedups import attention
from finetune_lib.speedups.attention import NAME, counter_dropout_attention, math_attention, switchable
from finetune_lib.testing import tiny_model

from ..training.helpers import classification_records, model_and_tokenizer


def _reference(q, k, v, p, mask, attn_mask=None, is_causal=False, low=None):
    """torch's math kernel given the same keep mask (its scale is 1/(1-p); ours the exact inverse)."""
    from finetune_lib.speedups.fast_dropout import keep_mask

    keep, scale = keep_mask(mask, p)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # the aten op adds masks as they are
        attn_mask = torch.where(attn_mask, 0.0, float("-inf"))
    if low is not None:
        q, k, v = (t.to(low) for t in (q, k, v))
        attn_mask = attn_mask.to(low) if attn_mask is not None else None
    out = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask, p, is_causal, keep)[0]
    return out * ((1 - p) * scale)


def _masked_row(gen: torch.Generator) -> torch.Tensor:
    """A boolean mask with fully masked query rows: torch's SDPA gives them zeros."""
    mask = torch.rand(3, 1, 7, 7, generator=gen) > 0.3
    mask[0, 0, 2] = False
    mask[2, 0, 6] = False
    return mask


@pytest.mark.filterwarnings("ignore:Dropout mask")
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "masked_row"])
@pytest.mark.parametrize("low", [None, torch.bfloat16])
def test_math_attention_is_torchs_math_kernel_with_the_counter_mask(kind, low):
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


@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION])
def test_fully_masked_rows_match_torchs_sdpa(monkeypatch, backend):
    """Without the dropout mask, the computation is torch's SDPA (either CPU kernel), fully masked rows
    included (zeros, no NaN): the public-ops replacement of torch's safe softmax."""
    monkeypatch.setattr(attention, "counter_dropout", lambda x, p: x)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, 4, 7, 16, generator=gen, requires_grad=True) for _ in range(3))
    mask = _masked_row(gen)
    ours = math_attention(q, k, v, attn_mask=mask, dropout_p=0.1)  # dropout_p > 0: our path, mask identity
    ours.square().sum().backward()
    ours_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    with sdpa_kernel([backend]):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref.square().sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(ours_grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert (ours[0, :, 2] == 0).all() and not ours.isnan().any()


def test_math_attention_passes_other_calls_to_torch():
    q = k = v = torch.randn(2, 2, 5, 8)
    torch.manual_seed(0)
    assert torch.equal(math_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(RuntimeError):  # torch refuses a mask with is_causal; so do we
        math_attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool), dropout_p=0.1, is_causal=True)


_DROPOUT = {"bert": {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.0},
            "gpt2": {"attn_pdrop": 0.1, "resid_pdrop": 0.0, "embd_pdrop": 0.0}}


@pytest.mark.parametrize("arch, task", [("bert", "classification"), ("gpt2", "causal_lm")])
def test_a_switched_model_computes_transformers_sdpa_attention(monkeypatch, arch, task):
    """With the mask taken out, a switched model in training mode gives the logits of its "sdpa"
    attention (padding on either side), and the switch is undone afterwards."""
    monkeypatch.setattr(attention, "counter_dropout", lambda x, p: x)
    calls = []
    original = attention.math_attention
    monkeypatch.setattr(attention, "math_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    model = tiny_model(arch, task, **_DROPOUT[arch])
    ids = torch.randint(5, 300, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, -3:], mask[1, :2] = 0, 0
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    assert switchable(model)
    with counter_dropout_attention(model) as switched, torch.no_grad():
        assert switched and model.config._attn_implementation == NAME
        model.train()
        got = model(input_ids=ids, attention_mask=mask).logits
    assert calls  # the counter-dropout path ran
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_models_not_on_sdpa_are_left_alone():
    model = tiny_model("bert", "classification")
    model.set_attn_implementation("eager")
    assert not switchable(model)
    with counter_dropout_attention(model) as switched:
        assert not switched and model.config._attn_implementation == "eager"
    with counter_dropout_attention(torch.nn.Linear(2, 2)) as switched:
        assert not switched


class _Teacher(Callback):
    """Calls a second model inside the training step (as a distillation regularizer would)."""

    def __init__(self, teacher):
        self.teacher, self.seen = teacher, []

    def on_loss_computed(self, state):
        self.seen.append((state.model.config._attn_implementation, self.teacher.config._attn_implementation,
                          torch.nn.functional.scaled_dot_product_attention))
        with torch.no_grad():
            self.teacher(**{k: v for k, v in state.batch.items() if k != "labels"})


def test_fit_draws_attention_dropout_with_the_counter_mask_for_its_own_model_only(monkeypatch):
    calls = []
    original = attention.math_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dropout_p", 0.0))
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "math_attention", counting)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run(speedups: bool) -> tuple[list[float], _Teacher]:
        calls.clear()
        model, tok = model_and_tokenizer("bert", "classification", dropout=0.2)
        teacher = model_and_tokenizer("bert", "classification", dropout=0.2)[0].train()  # dropout on, too
        spy = _Teacher(teacher)
        tuner = FineTuner(model, "classification", tokenizer=tok, epochs=1, batch_size=8, precision="fp32",
                          log_every=1, progress=False, loggers=(), callbacks=[spy], cpu_speedups=speedups)
        history = tuner.fit(classification_records(16), validation=classification_records(8, seed=1))
        assert torch.nn.functional.scaled_dot_product_attention is sdpa
        assert tuner.model.config._attn_implementation == "sdpa"  # put back
        return [h["train/loss"] for h in history if "train/loss" in h], spy

    first, spy = run(True)
    # training forwards of the run's model only: 2 steps x 4 layers (the teacher and evaluation: torch's)
    assert len(calls) == 8 and all(p == pytest.approx(0.2) for p in calls)
    assert {(ours, theirs) for ours, theirs, _ in spy.seen} == {(NAME, "sdpa")}
    assert all(f is sdpa for _, _, f in spy.seen)
    assert run(True)[0] == first  # seeded
    run(False)
    assert not calls
