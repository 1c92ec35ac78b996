"""LayerFreezer and regularizers inside FineTuner: frozen weights unchanged, gradual unfreezing that
survives an exact resume, early stopping on validation metrics, penalties in the log."""

import pytest
import torch

from finetune_lib import Callback, FineTuner, LayerFreezer
from finetune_lib.regularizers import L2SP, Dropout, EarlyStopping, LabelSmoothing, WeightDecay
from finetune_lib.testing import StopAt

from ..training.helpers import classification_records, generation_records, model_and_tokenizer


def tuner(out=None, freezer=None, regularizers=(), callbacks=(), arch="bert", task="classification", **kw):
    extra = {"num_labels": 2} if task == "classification" else {}
    model, tok = model_and_tokenizer(arch, task, dropout=0.1, **extra)
    settings = dict(epochs=3, batch_size=8, learning_rate=2e-3, log_every=1, progress=False)
    settings.update(kw)
    return FineTuner(model, task, tokenizer=tok, freezer=freezer, regularizers=list(regularizers),
                     callbacks=list(callbacks), output_dir=out, **settings)


@pytest.mark.parametrize("arch,task", [("bert", "classification"), ("gpt2", "causal_lm"), ("llama", "causal_lm"),
                                       ("t5", "seq2seq")])
def test_train_last_2_leaves_frozen_weights_bit_for_bit(arch, task):
    t = tuner(freezer=LayerFreezer(train_last=2), arch=arch, task=task, max_steps=4)
    before = {n: p.detach().clone() for n, p in t.model_source.named_parameters()}
    data = classification_records(32) if task == "classification" else generation_records(32)
    t.fit(data)
    changed = {n for n, p in t.model.named_parameters() if not torch.equal(before[n], p)}
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    in_optimizer = {n for g in t.optimizer.param_groups for n in g["names"]}
    assert in_optimizer == trainable


def test_gradual_unfreezing_survives_exact_resume(tmp_path):
    data = classification_records(48)

    def make(out, callbacks=()):
        return tuner(out, freezer=LayerFreezer(train_last=1, unfreeze_every=2), regularizers=[L2SP(0.01)],
                     callbacks=callbacks, epochs=2)

    full = make(tmp_path / "full")
    full.fit(data)
    groups_full = [len(g["params"]) for g in full.optimizer.param_groups]
    cut = make(tmp_path / "cut", callbacks=[StopAt(5)])
    cut.fit(data)
    again = make(tmp_path / "cut")
    again.fit(data, resume=True)
    assert [len(g["params"]) for g in again.optimizer.param_groups] == groups_full
    assert len(groups_full) > 2  # blocks were added as the run went on
    for (n, a), (_, b) in zip(full.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert "train/l2sp" in full.history[-1] and full.history[-1]["train/l2sp"] > 0


def test_early_stopping_on_validation_metric_restores_best():
    class Plateau(Callback):  # plant a validation curve: best at the 2nd evaluation, then worse
        values = iter([0.5, 0.9, 0.7, 0.6, 0.6, 0.6])

        def on_eval_end(self, state):
            state.record["validation/planted"] = next(self.values)

    snapshots = {}

    class Snap(Callback):
        def on_eval_end(self, state):
            snapshots[state.step] = {k: v.clone() for k, v in state.model.state_dict().items()}

    data = classification_records(48)
    stop = EarlyStopping(monitor="validation/planted", mode="max", patience=2)
    t = tuner(callbacks=[Snap()], regularizers=[Plateau(), stop], epochs=10, eval_every=2)
    t.fit(data[:32], data[32:])
    assert t.state.step == 8  # evaluations at 2, 4 (best), 6, 8: stopped after two without improvement
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, snapshots[4][k]), k


def test_regularizers_set_what_they_say():
    t = tuner(regularizers=[WeightDecay(0.05), LabelSmoothing(0.1), Dropout(0.0)], max_steps=2)
    t.fit(classification_records(16))
    assert t.weight_decay == 0.05 and t.task.label_smoothing == 0.1
    decays = {g["weight_decay"] for g in t.optimizer.param_groups if g["apply_decay"]}
    assert decays == {0.05}
    assert all(g["weight_decay"] == 0.0 for g in t.optimizer.param_groups if not g["apply_decay"])
    assert all(m.p == 0.0 for m in t.model.modules() if isinstance(m, torch.nn.Dropout))
