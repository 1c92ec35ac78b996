"""task="regression": MSE/Huber loss against a hand-written one, metrics against scikit-learn and SciPy,
target scaling folded into the saved head (pipeline() == predict()), slices and intervals, bad targets."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from finetune_lib import DatasetBuilder, FineTuner
from finetune_lib.data.records import DataError
from finetune_lib.metrics import (
    MeanAbsoluteError,
    MeanSquaredError,
    MetricSuite,
    PearsonCorrelation,
    R2Score,
    SpearmanCorrelation,
)
from finetune_lib.testing import sample_texts, save_tiny_pretrained

from .helpers import model_and_tokenizer


def regression_records(n: int = 48, seed: int = 0) -> list[dict]:
    """A learnable target far from 0 and 1: 50 + 10 x the number of 'good' words, per text."""
    good = {"great", "excellent", "perfectly", "helpful"}
    out = []
    for i, t in enumerate(sample_texts(n, seed=seed, max_words=12)):
        out.append({"text": t, "label": 50.0 + 10.0 * sum(w in good for w in t.split()) + (i % 3) * 0.5,
                    "lang": "en" if i % 2 else "fr"})
    return out


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("base") / "bert", arch="bert", task="classification")


def test_loss_of_a_batch_is_the_hand_written_mse_and_huber():
    from finetune_lib.tasks import get_task

    task = get_task("regression")
    logits = torch.tensor([[0.5], [-1.0], [2.0]])
    labels = torch.tensor([1.0, 0.0, 5.0])
    batch = {"labels": labels}
    outputs = type("Out", (), {"logits": logits})()
    assert task.count_targets(batch) == 3
    assert task.loss(outputs, batch, 3).item() == pytest.approx(F.mse_loss(logits.view(-1), labels).item())
    task.loss_kind, task.huber_delta = "huber", 1.0
    assert task.loss(outputs, batch, 3).item() == pytest.approx(F.huber_loss(logits.view(-1), labels).item())
    # scaled targets: the head learns (y - mean) / std, the metrics read predictions in the targets' units
    task.loss_kind, task.target_mean, task.target_std = "mse", 2.0, 4.0
    assert task.loss(outputs, batch, 3).item() == pytest.approx(
        F.mse_loss(logits.view(-1), (labels - 2.0) / 4.0).item())
    assert task.metric_predictions(logits).tolist() == pytest.approx([4.0, -2.0, 10.0])


def test_metrics_equal_sklearn_and_scipy():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    target = rng.normal(3.0, 2.0, 50)
    preds = target + rng.normal(0, 1.0, 50)
    preds[:5] = preds[5]  # ties, for Spearman's ranks
    metrics = [MeanSquaredError(), MeanAbsoluteError(), R2Score(), PearsonCorrelation(), SpearmanCorrelation()]
    for m in metrics:
        for i in range(0, 50, 16):  # streamed in batches
            m.update(torch.tensor(preds[i: i + 16]), torch.tensor(target[i: i + 16]))
    got = [m.compute() for m in metrics]
    want = [mean_squared_error(target, preds), mean_absolute_error(target, preds), r2_score(target, preds),
            pearsonr(preds, target)[0], spearmanr(preds, target)[0]]
    assert got == pytest.approx(want, rel=1e-9)


def test_fit_evaluate_with_slices_and_intervals_matches_sklearn(base_folder):
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_squared_error, r2_score

    data = regression_records(48)
    tuner = FineTuner(str(base_folder), "regression", max_steps=6, batch_size=8, learning_rate=1e-3,
                      scale_targets=True, progress=False, precision="fp32")
    tuner.fit(data[:32], data[32:])
    assert tuner.model.config.problem_type == "regression" and tuner.model.config.num_labels == 1
    assert any("validation/mse" in r for r in tuner.history)
    results = tuner.evaluate(data[32:], slices="lang", confidence=0.9)
    preds = np.array(tuner.predict([r["text"] for r in data[32:]]))
    target = np.array([r["label"] for r in data[32:]])
    assert results["mse"] == pytest.approx(mean_squared_error(target, preds), rel=1e-5)
    assert results["r2"] == pytest.approx(r2_score(target, preds), rel=1e-5, abs=1e-6)
    assert results["spearman"] == pytest.approx(spearmanr(preds, target)[0], rel=1e-5)
    assert results["mse_low"] <= results["mse"] <= results["mse_high"]
    fr = [i for i, r in enumerate(data[32:]) if r["lang"] == "fr"]
    assert results["fr/count"] == len(fr)
    assert results["fr/mae"] == pytest.approx(np.abs(preds[fr] - target[fr]).mean(), rel=1e-5)
    # the loss is in the standardized units the head learns
    mean, std = target.mean(), target.std()
    train = np.array([r["label"] for r in data[:32]])
    assert tuner.task.target_mean == pytest.approx(train.mean()) and tuner.task.target_std == pytest.approx(train.std())
    assert results["loss"] == pytest.approx(mean_squared_error((target - train.mean()) / train.std(),
                                                               (preds - train.mean()) / train.std()), rel=1e-4)
    del mean, std


def test_save_folds_the_scaling_so_pipeline_and_auto_class_give_the_targets_units(base_folder, tmp_path):
    data = regression_records(40)
    tuner = FineTuner(str(base_folder), "regression", max_steps=4, batch_size=8, learning_rate=1e-3,
                      scale_targets=True, progress=False, precision="fp32")
    tuner.fit(data)
    texts = ["great phone works perfectly", "broken charger slow delivery", "helpful"]
    ours = tuner.predict(texts)
    assert all(isinstance(v, float) for v in ours) and min(ours) > 20  # in the targets' units, not standardized
    head_before = tuner.model.classifier.weight.detach().clone()
    out = tuner.save(tmp_path / "final")
    assert torch.equal(tuner.model.classifier.weight, head_before)  # the live model is unchanged
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    assert model.config.finetune_lib_target_scaling["std"] == pytest.approx(tuner.task.target_std)
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        raw = model(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0]
    assert raw.tolist() == pytest.approx(ours, rel=1e-4)
    predict = pipeline("text-classification", model=str(out), tokenizer=str(out))
    assert [r[0]["score"] if isinstance(r, list) else r["score"]
            for r in predict(texts, function_to_apply="none")] == pytest.approx(ours, rel=1e-4)
    # a tuner over the saved folder predicts the same values (no scaling left to undo)
    again = FineTuner(str(out), "regression", progress=False, precision="fp32")
    assert again.predict(texts) == pytest.approx(ours, rel=1e-4)
    card = (out / "README.md").read_text()
    assert "target scaling" in card and 'function_to_apply="none"' in card


def test_huber_loss_trains_and_is_recorded(base_folder, tmp_path):
    data = regression_records(24)
    tuner = FineTuner(str(base_folder), "regression", max_steps=2, batch_size=8, regression_loss="huber",
                      huber_delta=2.0, progress=False)
    tuner.fit(data)
    assert tuner.task.loss_kind == "huber" and tuner.task.huber_delta == 2.0
    assert math.isfinite(tuner.history[-1]["train/loss"])
    tuner.evaluate(data)
    card = (tuner.save(tmp_path / "m") / "README.md").read_text()
    assert "Huber (delta 2)" in card


@pytest.mark.parametrize("label", [float("nan"), float("inf"), None, "3.5", [1.0]])
def test_non_finite_or_non_numeric_targets_are_refused_before_training(base_folder, tmp_path, label):
    data = regression_records(8)
    data[3]["label"] = label
    tuner = FineTuner(str(base_folder), "regression", max_steps=1, progress=False, output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="regression label must be a finite number"):
        tuner.fit(data)
    assert not (tmp_path / "run").exists()


def test_settings_of_other_tasks_are_refused():
    with pytest.raises(ValueError, match="class_weights is for tasks with classes"):
        FineTuner("unused", "regression", class_weights="balanced")
    with pytest.raises(ValueError, match="scale_targets and regression_loss are for task='regression'"):
        FineTuner("unused", "classification", scale_targets=True)
    with pytest.raises(ValueError, match="regression_loss must be one of"):
        FineTuner("unused", "regression", regression_loss="l1")


def test_constant_targets_cannot_be_scaled(base_folder):
    data = [{"text": t, "label": 2.0} for t in sample_texts(8)]
    tuner = FineTuner(str(base_folder), "regression", max_steps=1, scale_targets=True, progress=False)
    with pytest.raises(ValueError, match="every target is 2.0"):
        tuner.fit(data)


def test_model_object_with_a_wide_head_is_refused():
    model, tok = model_and_tokenizer("bert", "classification", num_labels=3)
    tuner = FineTuner(model, "regression", tokenizer=tok, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="needs a head with one output"):
        tuner.fit(regression_records(8))


def test_classification_metrics_are_refused_for_regression():
    from finetune_lib.metrics import Accuracy

    with pytest.raises(ValueError, match="reads 'classes' inputs"):
        FineTuner("unused", "regression", metrics=MetricSuite([Accuracy()]))


def test_stratified_split_refuses_regression_targets():
    builder = DatasetBuilder.from_records(regression_records(30))
    with pytest.raises(DataError, match="regression"):
        builder.split(validation=0.2, test=0.2, stratify=True)
    assert builder.split(validation=0.2, test=0.2).sizes["train"] == 18


def test_the_data_layers_label_kinds_agree_with_the_tasks():
    from finetune_lib.data.preprocessor import LABEL_KINDS
    from finetune_lib.tasks import get_task

    for name, kind in LABEL_KINDS.items():
        assert get_task(name).label_kind == kind
