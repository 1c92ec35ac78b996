"""One small fitted classifier (tiny BERT, 2 blocks trained) shared by the reporting tests."""

import pytest

from finetune_lib import FineTuner, LayerFreezer, MetricSuite
from finetune_lib.data.report import build_report
from finetune_lib.metrics import F1, Accuracy, ConfusionMatrix
from finetune_lib.testing import save_tiny_pretrained

from ..training.helpers import classification_records


@pytest.fixture(scope="session")
def data():
    records = classification_records(72)
    for i, r in enumerate(records):
        r["source"] = "web" if i % 2 else "mail"
    return {"train": records[:48], "validation": records[48:60], "test": records[60:]}


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, data):
    """(tuner, test results with 95% intervals and slices, DataReport)."""
    folder = save_tiny_pretrained(tmp_path_factory.mktemp("base") / "tiny-bert", arch="bert", task="classification")
    tuner = FineTuner(str(folder), "classification", freezer=LayerFreezer(train_last=2),
                      metrics=MetricSuite([Accuracy(), F1(average="macro"), ConfusionMatrix()]),
                      epochs=2, batch_size=8, log_every=2, learning_rate=1e-3, progress=False)
    tuner.fit(data["train"], data["validation"])
    results = tuner.evaluate(data["test"], confidence=0.95, slices="source")
    return tuner, results, build_report(data)
