"""Regularizers that act during training: L2SP, RDrop, EarlyStopping, OverfittingMonitor."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from finetune_lib.events import TrainState
from finetune_lib.freezing import freeze
from finetune_lib.regularizers import (
    L2SP,
    EarlyStopping,
    OverfittingMonitor,
    RDrop,
    set_dropout,
    symmetric_kl,
)
from finetune_lib.testing import tiny_model


def _step(model, state, optimizer, regs, batch):
    state.batch = batch
    state.outputs = model(**batch)
    state.loss = state.outputs.loss
    state.penalties = {}
    for reg in regs:
        reg.on_loss_computed(state)
    optimizer.zero_grad()
    state.loss.backward()
    optimizer.step()
    state.step += 1


def test_l2sp_zero_at_start_positive_after_steps(helpers):
    model = tiny_model("bert", "classification")
    freeze(model, train_last=1)
    reg = L2SP(alpha=0.1)
    state = TrainState(model=model)
    reg.on_fit_start(state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(reg.state_dict()) == {"start/" + n for n in trainable}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert reg.penalty(state).item() == 0.0

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for i in range(3):
        _step(model, state, optimizer, [reg], helpers.make_batch("classification", seed=i))
    assert state.penalties["l2sp"].item() > 0.0
    value = reg.penalty(state)
    manual = 0.5 * 0.1 * sum(((p - start[n]) ** 2).sum() for n, p in model.named_parameters() if n in trainable)
    torch.testing.assert_close(value, manual)
    value.backward()  # differentiable
    assert model.classifier.weight.grad is not None

    excluded = L2SP(alpha=0.1, exclude=["classifier*"])
    excluded.on_fit_start(state)
    assert not any(k.startswith("start/classifier") for k in excluded.state_dict())


def test_rdrop_positive_with_dropout_zero_without(helpers):
    for task, arch in [("classification", "bert"), ("causal_lm", "gpt2"), ("seq2seq", "t5")]:
        model = tiny_model(arch, task)
        batch = helpers.make_batch(task)
        reg = RDrop(alpha=1.0)
        state = TrainState(model=model, batch=batch)

        set_dropout(model, 0.3)
        model.train()
        state.outputs = model(**batch)
        state.loss = state.outputs.loss
        loss_before = state.loss.item()
        reg.on_loss_computed(state)
        assert state.penalties["rdrop"].item() > 0.0, task
        assert state.loss.item() == pytest.approx(loss_before + state.penalties["rdrop"].item())
        state.loss.backward()

        set_dropout(model, 0.0)
        state.outputs = model(**batch)
        assert reg.penalty(state).item() == 0.0, task

        model.eval()
        assert reg.penalty(state) is None


def test_symmetric_kl_reference():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    p, q = a.softmax(-1), b.softmax(-1)
    reference = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1))
    torch.testing.assert_close(symmetric_kl(a, b), reference)
    assert torch.equal(symmetric_kl(a, a), torch.zeros(3))


def _feed(stopper, model, values, key="validation/loss"):
    state = TrainState(model=model)
    stopped_at = None
    for i, value in enumerate(values):
        state.step = (i + 1) * 10
        with torch.no_grad():
            model.weight.fill_(float(i))  # weights tell which evaluation they come from
        state.record = {key: value, "validation/accuracy": 0.5}
        stopper.on_eval_end(state)
        if state.should_stop and stopped_at is None:
            stopped_at = i
            break
    return state, stopped_at


def test_early_stopping_on_plateau_restores_best():
    model = torch.nn.Linear(2, 2)
    stopper = EarlyStopping(monitor="validation/loss", patience=3)
    assert stopper.mode == "min"
    values = [1.0, 0.8, 0.6, 0.61, 0.6, 0.7, 0.5]
    state, stopped_at = _feed(stopper, model, values)
    assert stopped_at == 5  # three evaluations without improvement after 0.6 at index 2
    assert stopper.best == 0.6 and stopper.best_step == 30
    stopper.on_fit_end(state)
    assert torch.equal(model.weight, torch.full((2, 2), 2.0))  # the weights of evaluation 2

    # the state survives a checkpoint: JSON for the scalars, tensors for the weights
    saved = stopper.state_dict()
    scalars = {k: v for k, v in saved.items() if not isinstance(v, torch.Tensor)}
    json.dumps(scalars)
    other = EarlyStopping(monitor="validation/loss", patience=3)
    other.load_state_dict(saved)
    with torch.no_grad():
        model.weight.fill_(9.0)
    other.on_fit_end(state)
    assert torch.equal(model.weight, torch.full((2, 2), 2.0))
    assert other.wait == 3 and other.best == 0.6


def test_early_stopping_max_mode_min_delta_and_missing_key():
    model = torch.nn.Linear(2, 2)
    stopper = EarlyStopping(monitor="validation/f1", patience=2, min_delta=0.05)
    assert stopper.mode == "max"
    _, stopped_at = _feed(stopper, model, [0.5, 0.7, 0.72, 0.74, 0.9], key="validation/f1")
    assert stopped_at == 3  # 0.72 and 0.74 are within min_delta of 0.7
    with pytest.raises(ValueError, match="available"):
        EarlyStopping(monitor="validation/f2").on_eval_end(
            TrainState(model=model, record={"validation/f1": 0.3}))
    EarlyStopping(monitor="validation/loss").on_eval_end(  # another split's results are ignored
        TrainState(model=model, record={"test/loss": 0.3}))
    assert EarlyStopping(monitor="validation/perplexity").mode == "min"


def test_early_stopping_tied_weights_saved_once():
    model = tiny_model("gpt2", "causal_lm")
    stopper = EarlyStopping(patience=1)
    stopper.on_eval_end(TrainState(model=model, record={"validation/loss": 1.0}))
    saved = stopper.state_dict()
    tensors = [v for v in saved.values() if isinstance(v, torch.Tensor)]
    assert len({t.data_ptr() for t in tensors}) == len(tensors)  # no shared storage (safetensors-safe)
    other = EarlyStopping(patience=1)
    other.load_state_dict(saved)
    other.restore(model)


def _curves(monitor, train_losses, val_losses):
    state = TrainState(model=torch.nn.Linear(1, 1))
    fired = []
    for train_chunk, val in zip(train_losses, val_losses):
        for loss in train_chunk:
            state.record = {"train/loss": loss}
            monitor.on_log(state)
        state.record = {"validation/loss": val}
        monitor.on_eval_end(state)
        fired.append("overfitting_warning" in state.extra)
    return state, fired


def test_overfitting_monitor_fires_on_planted_curves(caplog):
    monitor = OverfittingMonitor(patience=2)
    train = [[2.0, 1.8], [1.5, 1.4], [1.2, 1.0], [0.9, 0.8], [0.7, 0.6]]
    val = [1.5, 1.3, 1.35, 1.4, 1.5]  # falls, then rises while training keeps falling
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        state, fired = _curves(monitor, train, val)
    assert fired == [False, False, False, True, True]
    assert "overfitting" in state.extra["overfitting_warning"].lower()
    assert len([r for r in caplog.records if r.name == "finetune_lib.regularizers.overfitting"]) == 1  # once per streak

    healthy = OverfittingMonitor(patience=2)
    _, fired = _curves(healthy, train, [1.5, 1.3, 1.2, 1.1, 1.0])
    assert not any(fired)
    both_rise = OverfittingMonitor(patience=1)  # validation rises but training rises too: not overfitting
    _, fired = _curves(both_rise, [[1.0], [1.1], [1.2]], [1.0, 1.1, 1.2])
    assert not any(fired)
    resumed = OverfittingMonitor(patience=2)
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.count == monitor.count


# ---- the overfitting warning in the progress bar ------------------------------------------------
class FakeBar:
    """Stands in for tqdm: records what the progress bar is told to show."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.postfixes, self.written, self.closed = kwargs, [], [], False
        FakeBar.made.append(self)

    def update(self, n=1):
        pass

    def set_postfix(self, post, refresh=True):
        self.postfixes.append(dict(post))

    def write(self, text):
        self.written.append(text)

    def close(self):
        self.closed = True


def test_progress_bar_shows_the_overfitting_warning():
    from finetune_lib.training.callbacks import ProgressBar

    bar = ProgressBar(enabled=True)
    bar.bar = FakeBar()
    state = TrainState(model=torch.nn.Linear(1, 1))
    state.record = {"step": 4, "train/loss": 0.5, "train/lr": 1e-3}
    bar.on_log(state)
    assert bar.bar.postfixes[-1] == {"loss": "0.5"}  # no warning while none was raised
    state.extra["overfitting_warning"] = "Possible overfitting at step 4: ..."
    bar.on_log(state)
    assert bar.bar.postfixes[-1] == {"loss": "0.5", "warning": "overfitting"}
    state.record = {"step": 4, "validation/loss": 0.75}
    bar.on_eval_end(state)
    assert bar.bar.postfixes[-1] == {"validation/loss": "0.75", "warning": "overfitting"}


class PlantedMonitor(OverfittingMonitor):
    """The real monitor, fed planted losses: training falls at every log, validation rises at every
    evaluation, so it warns at the second evaluation (patience=1)."""

    def __init__(self):
        super().__init__(patience=1)
        self.logs = self.evals = 0

    def on_log(self, state):
        if "train/loss" in state.record:
            self.logs += 1
            super().on_log(SimpleNamespace(record={"train/loss": 1.0 / self.logs}))

    def on_eval_end(self, state):
        self.evals += 1
        super().on_eval_end(SimpleNamespace(record={"validation/loss": float(self.evals)}, step=state.step,
                                            extra=state.extra))


def test_progress_bar_shows_the_warning_in_a_real_fit(monkeypatch):
    """In FineTuner the validation record is logged before eval_end (where the monitor decides), so a
    warning raised at the last evaluation must still reach the bar."""
    from finetune_lib import FineTuner
    from finetune_lib.testing import sample_texts, tiny_tokenizer
    from finetune_lib.training import callbacks

    monkeypatch.setattr(callbacks, "tqdm", FakeBar)
    FakeBar.made = []
    tok = tiny_tokenizer(kind="encoder")
    model = tiny_model("bert", "classification", vocab_size=len(tok), num_labels=2)
    records = [{"text": t, "label": i % 2} for i, t in enumerate(sample_texts(24, seed=0, max_words=6))]
    monitor = PlantedMonitor()
    tuner = FineTuner(model, "classification", tokenizer=tok, regularizers=[monitor], output_dir=None,
                      epochs=2, batch_size=8, log_every=1, progress=True, loggers=())
    tuner.fit(records[:16], records[16:])
    assert monitor.evals == 2 and monitor.warning is not None  # it fired, at the last evaluation
    (bar,) = FakeBar.made
    assert bar.closed and bar.postfixes[-1].get("warning") == "overfitting"
    first = next(i for i, p in enumerate(bar.postfixes) if "warning" in p)
    assert "validation/loss" in bar.postfixes[first]  # shown with the evaluation that raised it


def test_rdrop_on_token_classification_compares_each_labelled_token_with_itself():
    # token classification: logits[:, t] predict labels[:, t] (no causal shift)
    from finetune_lib.regularizers.rdrop import symmetric_kl
    from finetune_lib.tasks import get_task

    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 1, 2, -100, 0], [-100, 0, -100, -100, -100]])
    task = get_task("token_classification")

    class Twice(torch.nn.Module):  # first pass returns a, the second b
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, **_):
            self.calls += 1
            return type("Out", (), {"logits": b})()

    state = TrainState(model=Twice(), batch={"labels": labels}, task=task)
    state.outputs = type("Out", (), {"logits": a})()
    state.num_targets = 4
    value = RDrop(alpha=1.0, forward=lambda m, batch: m(**batch)).penalty(state)
    mask = labels != -100
    torch.testing.assert_close(value, symmetric_kl(a[mask], b[mask]).sum() / 4)


@pytest.mark.parametrize("task", ["regression", "multilabel_classification"])
def test_rdrop_and_label_smoothing_refused_for_tasks_without_a_softmax(task):
    from finetune_lib.regularizers import LabelSmoothing
    from finetune_lib.tasks import get_task

    state = TrainState(model=torch.nn.Linear(2, 2), task=get_task(task))
    with pytest.raises(ValueError, match="Drop RDrop"):
        RDrop(1.0).on_setup(state)
    with pytest.raises(ValueError, match="Drop LabelSmoothing"):
        LabelSmoothing(0.1).on_setup(state)
