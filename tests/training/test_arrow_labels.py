"""Labels of Arrow-backed training data are read column-wise (distinct values and counts), with the same
label mapping, class weights and target scaling as the same records as a list."""

from __future__ import annotations

import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib import FineTuner  # noqa: E402
from finetune_lib.testing import sample_texts, save_tiny_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("base") / "bert", arch="bert", task="classification")


def _tuner(folder, task, **kw):
    return FineTuner(str(folder), task, max_steps=1, batch_size=8, progress=False, loggers=(), **kw)


def test_class_weights_and_label_mapping_equal_the_list_paths(base_folder):
    labels = ["b"] * 20 + ["a"] * 14 + ["c"] * 6
    records = [{"text": t, "label": y} for t, y in zip(sample_texts(40, seed=3), labels)]
    listed, arrowed = (_tuner(base_folder, "classification", class_weights="balanced") for _ in range(2))
    listed.fit(records)
    arrowed.fit(datasets.Dataset.from_list(records).select(list(range(39, -1, -1))))  # a selection, reversed
    assert arrowed.preprocessor.label2id == listed.preprocessor.label2id
    assert arrowed.preprocessor.observed_labels == listed.preprocessor.observed_labels
    assert arrowed.task.class_weights.tolist() == pytest.approx(listed.task.class_weights.tolist())


def test_integer_labels_and_target_scaling_equal_the_list_paths(base_folder):
    records = [{"text": t, "label": i % 3} for i, t in enumerate(sample_texts(24, seed=1))]
    listed, arrowed = (_tuner(base_folder, "classification") for _ in range(2))
    listed.fit(records)
    arrowed.fit(datasets.Dataset.from_list(records))
    assert arrowed.preprocessor.label_names == listed.preprocessor.label_names == [0, 1, 2]
    values = [{"text": t, "label": 0.5 * i} for i, t in enumerate(sample_texts(24, seed=2))]
    listed, arrowed = (_tuner(base_folder, "regression", scale_targets=True) for _ in range(2))
    listed.fit(values)
    arrowed.fit(datasets.Dataset.from_list(values))
    assert (arrowed.task.target_mean, arrowed.task.target_std) == pytest.approx((listed.task.target_mean,
                                                                                 listed.task.target_std))
