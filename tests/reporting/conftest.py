"""Small fitted classifiers shared by the reporting tests: one plain (tiny BERT, 2 blocks trained), one with
weight decay, dropout and early stopping on a planted validation curve."""

import pytest
import torch

from finetune_lib import Callback, FineTuner, LayerFreezer, MetricSuite
from finetune_lib.data.report import build_report
from finetune_lib.metrics import F1, Accuracy, ConfusionMatrix
from finetune_lib.regularizers import Dropout, EarlyStopping, WeightDecay
from finetune_lib.testing import save_tiny_pretrained

from ..training.helpers import classification_records


@pytest.fixture(scope="session")
def data():
    records = classification_records(72)
    for i, r in enumerate(records):
        r["source"] = "web" if i % 2 else "mail"
    return {"train": records[:48], "validation": records[48:60], "test": records[60:]}


@pytest.fixture(scope="session")
def base_folder(tmp_path_factory):
    """A tiny BERT saved in a local folder (an absolute path that must never reach a card)."""
    return save_tiny_pretrained(tmp_path_factory.mktemp("base") / "tiny-bert", arch="bert", task="classification")


@pytest.fixture(scope="session")
def fitted(base_folder, data):
    """(tuner, test results with 95% intervals and slices, DataReport)."""
    tuner = FineTuner(str(base_folder), "classification", freezer=LayerFreezer(train_last=2),
                      metrics=MetricSuite([Accuracy(), F1(average="macro"), ConfusionMatrix()]),
                      epochs=2, batch_size=8, log_every=2, learning_rate=1e-3, progress=False)
    tuner.fit(data["train"], data["validation"])
    results = tuner.evaluate(data["test"], confidence=0.95, slices="source")
    return tuner, results, build_report(data)


class Planted(Callback):
    """Plants `validation/planted` in each evaluation record (a curve whose best step is known)."""

    def __init__(self, values):
        self.values = iter(values)

    def on_eval_end(self, state):
        state.record["validation/planted"] = next(self.values)


class Snapshots(Callback):
    """The model's weights after each evaluation, by step."""

    def __init__(self):
        self.weights = {}

    def on_eval_end(self, state):
        self.weights[state.step] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def early_stopped(base_folder, data, values, output_dir=None, **settings):
    """A run with WeightDecay(0.01), Dropout(0.1) and EarlyStopping on a planted curve (evaluations every 2
    steps, 6 steps per epoch); returns (tuner, Snapshots)."""
    snaps = Snapshots()
    tuner = FineTuner(str(base_folder), "classification", regularizers=[
        Planted(values), WeightDecay(0.01), Dropout(0.1),
        EarlyStopping(monitor="validation/planted", mode="max", patience=2)],
        callbacks=[snaps], batch_size=8, eval_every=2, log_every=1, learning_rate=1e-3, progress=False,
        output_dir=output_dir, loggers=(), **settings)
    tuner.fit(data["train"], data["validation"])
    return tuner, snaps


@pytest.fixture(scope="session")
def stopped(base_folder, data, tmp_path_factory):
    """Best at step 4, no improvement at 6 and 8: early stopping ends the run at step 8 of 60 planned and
    restores the weights of step 4. Run in an absolute output_dir."""
    tuner, snaps = early_stopped(base_folder, data, [0.5, 0.9, 0.7, 0.6], tmp_path_factory.mktemp("runs") / "es",
                                 epochs=10)
    assert tuner.state.step == 8 and tuner.state.max_steps == 60
    for key, value in tuner.model.state_dict().items():  # the reference: the weights really are step 4's
        assert torch.equal(value, snaps.weights[4][key]), key
    return tuner
