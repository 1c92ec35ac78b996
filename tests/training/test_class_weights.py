"""class_weights: "balanced" equals scikit-learn's compute_class_weight, the weighted loss equals
F.cross_entropy(weight=...) summed over the examples / the examples, multi-label pos_weight, the model
card and the report record them, and bad settings are refused before training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune_lib import FineTuner
from finetune_lib.testing import sample_texts, save_tiny_pretrained

from .helpers import classification_records


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("base") / "bert", arch="bert", task="classification")


def imbalanced_records(n: int = 40) -> list[dict]:
    """Three classes, 'c' rare."""
    labels = ["a"] * (n // 2) + ["b"] * (n // 2 - 4) + ["c"] * 4
    return [{"text": t, "label": label} for t, label in zip(sample_texts(n, seed=3), labels)]


def test_balanced_weights_equal_sklearn_and_the_loss_is_weighted_ce_over_examples(base_folder, tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    data = imbalanced_records()
    tuner = FineTuner(str(base_folder), "classification", max_steps=2, batch_size=8, class_weights="balanced",
                      progress=False)
    tuner.fit(data)
    y = [r["label"] for r in data]
    want = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=np.array(y))
    assert tuner.task.class_weights.tolist() == pytest.approx(want.tolist())
    # the loss of a batch: sum_i w[y_i] * CE_i / examples (the normalization of every task), not torch's weighted mean
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 2, 0])
    outputs = type("Out", (), {"logits": logits})()
    got = tuner.task.loss(outputs, {"labels": labels}, 5)
    weight = torch.tensor(want, dtype=torch.float32)
    assert got.item() == pytest.approx((F.cross_entropy(logits, labels, weight=weight, reduction="sum") / 5).item())
    # evaluation reports the plain loss
    plain = tuner.task.aligned_loss_sum(logits, labels, smoothing=False) / 5
    assert plain.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    # the card and the report say which weights were used
    out = tuner.save(tmp_path / "final")
    card = (out / "README.md").read_text()
    assert "class weights (cross-entropy)" in card and f"`c` {float(f'{want[2]:.6g}')}" in card
    from finetune_lib.reporting.tuner_info import run_info_from_tuner

    assert run_info_from_tuner(tuner).task_details["class weights (cross-entropy)"]["c"] == pytest.approx(want[2], rel=1e-5)


def test_mapping_weights_and_default_one(base_folder):
    data = imbalanced_records()
    tuner = FineTuner(str(base_folder), "classification", max_steps=1, batch_size=8, class_weights={"c": 5.0},
                      progress=False)
    tuner.fit(data)
    assert tuner.task.class_weights.tolist() == [1.0, 1.0, 5.0]


def test_integer_labels_accept_string_keys_from_a_config_file(base_folder):
    data = [{"text": r["text"], "label": int(r["label"] == "positive")} for r in classification_records(24)]
    tuner = FineTuner(str(base_folder), "classification", max_steps=1, batch_size=8,
                      class_weights={"1": 3.0, 0: 0.5}, progress=False)
    tuner.fit(data)
    assert tuner.task.class_weights.tolist() == [0.5, 3.0]


def test_multilabel_balanced_is_pos_weight_negatives_over_positives(base_folder):
    texts = sample_texts(20, seed=4)
    labels = [["x"]] * 10 + [["x", "y"]] * 5 + [["z"]] * 5
    data = [{"text": t, "label": list(label)} for t, label in zip(texts, labels)]
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=1, batch_size=8,
                      class_weights="balanced", progress=False)
    tuner.fit(data)
    # x: 15 positive / 5 negative, y: 5 / 15, z: 5 / 15
    assert tuner.task.pos_weight.tolist() == pytest.approx([5 / 15, 15 / 5, 15 / 5])
    assert "class weights (BCE pos_weight)" in tuner.task.details(["x", "y", "z"])


@pytest.mark.parametrize("weights, message", [
    ({"d": 2.0}, r"names label\(s\) \['d'\] that the training data does not have"),
    ({"a": 0.0}, "positive finite numbers"),
    ({"a": -1.0}, "positive finite numbers"),
    ({"a": float("nan")}, "positive finite numbers"),
    ("inverse", "class_weights must be 'balanced', a mapping"),
])
def test_bad_weights_are_refused_before_training(base_folder, tmp_path, weights, message):
    with pytest.raises(ValueError, match=message):
        tuner = FineTuner(str(base_folder), "classification", max_steps=1, class_weights=weights, progress=False,
                          output_dir=tmp_path / "run")
        tuner.fit(imbalanced_records())
    assert not (tmp_path / "run").exists()


def test_balanced_refuses_a_class_without_examples(base_folder):
    from finetune_lib import Preprocessor

    tuner = FineTuner(str(base_folder), "classification", max_steps=1, class_weights="balanced", progress=False,
                      preprocessor=Preprocessor(labels=["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match=r"cannot weight label\(s\) \['d'\].*pass a mapping"):
        tuner.fit(imbalanced_records())


def test_generation_tasks_refuse_class_weights():
    with pytest.raises(ValueError, match="task 'causal_lm' has none"):
        FineTuner("unused", "causal_lm", class_weights="balanced")
