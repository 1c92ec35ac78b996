"""task="multilabel_classification": BCE loss against torch's, metrics against scikit-learn, thresholds
(fixed, tuned, saved, applied by predict), save -> Auto class and pipeline(), slices and intervals, bad labels."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from finetune_lib import DatasetBuilder, FineTuner
from finetune_lib.metrics import HammingLoss, MetricSuite, MultiLabelF1, SubsetAccuracy
from finetune_lib.testing import sample_texts, save_tiny_pretrained
from finetune_lib.training.task_settings import best_thresholds

TOPICS = {"battery": {"battery", "charger"}, "screen": {"screen", "display"}, "praise": {"great", "excellent"}}


def multilabel_records(n: int = 48, seed: int = 0) -> list[dict]:
    """Labels from the words a text holds; texts with none get "other" (an empty list is refused)."""
    out = []
    for i, t in enumerate(sample_texts(n, seed=seed, max_words=12)):
        words = set(t.split())
        labels = [name for name, keys in TOPICS.items() if keys & words] or ["other"]
        out.append({"text": t, "label": labels, "lang": "en" if i % 2 else "fr"})
    return out


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("base") / "bert", arch="bert", task="classification")


def test_loss_of_a_batch_is_torch_bce_with_logits_mean():
    from finetune_lib.tasks import get_task

    task = get_task("multilabel_classification")
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    batch = {"labels": labels}
    outputs = type("Out", (), {"logits": logits})()
    assert task.count_targets(batch) == 6  # examples x labels
    want = torch.nn.BCEWithLogitsLoss()(logits, labels)
    assert task.loss(outputs, batch, task.count_targets(batch)).item() == pytest.approx(want.item())
    # two micro-batches with the whole batch's normalizer sum to the same loss
    halves = sum(task.loss(type("O", (), {"logits": logits[i:i + 1]})(), {"labels": labels[i:i + 1]}, 6)
                 for i in range(2))
    assert halves.item() == pytest.approx(want.item())
    task.pos_weight = torch.tensor([2.0, 1.0, 0.5])
    weighted = torch.nn.BCEWithLogitsLoss(pos_weight=task.pos_weight)(logits, labels)
    assert task.loss(outputs, batch, 6).item() == pytest.approx(weighted.item())
    assert task.aligned_loss_sum(logits, labels, smoothing=False).item() / 6 == pytest.approx(want.item())


def test_metrics_equal_sklearn_on_indicator_matrices():
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss

    rng = np.random.default_rng(0)
    target = (rng.random((40, 5)) < 0.3).astype(int)
    preds = (rng.random((40, 5)) < 0.3).astype(int)
    target[:, 4] = 0  # a label never true...
    preds[:, 4] = 0  # ...nor predicted: macro counts it as 0, as scikit-learn does
    preds[0] = 0  # an example with no predicted label
    metrics = [MultiLabelF1(average=a) for a in ("micro", "macro", "samples", "weighted")]
    metrics += [HammingLoss(), SubsetAccuracy()]
    for m in metrics:
        for i in range(0, 40, 16):
            m.update(torch.tensor(preds[i: i + 16]), torch.tensor(target[i: i + 16]))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = [f1_score(target, preds, average=a) for a in ("micro", "macro", "samples", "weighted")]
    want += [hamming_loss(target, preds), accuracy_score(target, preds)]
    assert [m.compute() for m in metrics] == pytest.approx(want, rel=1e-12)
    assert [m.name for m in metrics[:4]] == ["f1_micro", "f1_macro", "f1_samples", "f1_weighted"]


def test_best_thresholds_maximize_each_labels_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    truth = (rng.random((60, 3)) < 0.4).astype(int)
    probs = np.clip(truth * 0.3 + rng.random((60, 3)) * 0.7, 0, 1)
    chosen = best_thresholds(probs, truth)
    for j in range(3):
        best = max(f1_score(truth[:, j], probs[:, j] >= t) for t in np.unique(probs[:, j]))
        assert f1_score(truth[:, j], probs[:, j] >= chosen[j]) == pytest.approx(best)
    assert best_thresholds(probs, np.zeros_like(truth)).tolist() == [0.5, 0.5, 0.5]


def test_fit_evaluate_predict_save_and_pipeline(base_folder, tmp_path):
    from sklearn.metrics import f1_score, hamming_loss

    data = multilabel_records(64)
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=6, batch_size=8,
                      learning_rate=1e-3, tune_thresholds=True, progress=False, precision="fp32")
    tuner.fit(data[:40], data[40:])
    names = tuner.preprocessor.label_names
    assert names == ["battery", "other", "praise", "screen"]
    config = tuner.model.config
    assert config.problem_type == "multi_label_classification" and config.num_labels == 4
    assert tuner.task.thresholds is not None and tuner.task.thresholds_tuned
    results = tuner.evaluate(data[40:], slices="lang", confidence=0.9)
    test = data[40:]
    preds = tuner.predict([r["text"] for r in test])
    assert set(preds[0]) == {"labels", "scores"} and set(preds[0]["scores"]) == set(names)
    thresholds = dict(zip(names, tuner.task.thresholds.tolist()))
    for p in preds:  # predict applies the per-label thresholds
        assert p["labels"] == [n for n in names if p["scores"][n] >= thresholds[n]]
    pred_m = np.array([[int(n in p["labels"]) for n in names] for p in preds])
    true_m = np.array([[int(n in r["label"]) for n in names] for r in test])
    assert results["f1_micro"] == pytest.approx(f1_score(true_m, pred_m, average="micro", zero_division=0))
    assert results["hamming_loss"] == pytest.approx(hamming_loss(true_m, pred_m))
    assert results["f1_micro_low"] <= results["f1_micro"] <= results["f1_micro_high"]
    assert results["en/count"] + results["fr/count"] == len(test)

    out = tuner.save(tmp_path / "final")
    saved = json.loads((out / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    assert saved["finetune_lib_thresholds"] == pytest.approx(thresholds, abs=1e-6)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    texts = [r["text"] for r in test[:3]]
    with torch.no_grad():
        probs = model(**tok(texts, return_tensors="pt", padding=True)).logits.sigmoid()
    for i, p in enumerate(preds[:3]):
        assert [p["scores"][n] for n in names] == pytest.approx(probs[i].tolist(), abs=1e-5)
    classify = pipeline("text-classification", model=str(out), tokenizer=str(out))
    scores = classify(texts, top_k=None)  # multi-label: sigmoid per label
    for i, row in enumerate(scores):
        assert {s["label"]: s["score"] for s in row} == pytest.approx(preds[i]["scores"], abs=1e-5)
    card = (out / "README.md").read_text()
    assert "tuned on the validation data" in card and "finetune_lib_thresholds" in card
    # a tuner over the saved folder reads the thresholds back
    again = FineTuner(str(out), "multilabel_classification", progress=False, precision="fp32")
    assert [p["labels"] for p in again.predict(texts)] == [p["labels"] for p in preds[:3]]
    assert again.task.thresholds.tolist() == pytest.approx(tuner.task.thresholds.tolist(), abs=1e-6)


def test_fixed_threshold_is_applied(base_folder):
    data = multilabel_records(24)
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=1, batch_size=8, threshold=0.01,
                      progress=False)
    tuner.fit(data)
    assert all(len(p["labels"]) == 4 for p in tuner.predict(["great battery", "screen"]))


def test_empty_label_list_is_refused_before_training(base_folder, tmp_path):
    data = multilabel_records(8)
    data[2]["label"] = []
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=1, progress=False,
                      output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"record 2: label is list \[\].*non-empty list.*\['none'\]"):
        tuner.fit(data)
    assert not (tmp_path / "run").exists()


def test_scalar_label_and_tune_without_validation_are_refused(base_folder):
    data = multilabel_records(8)
    data[1]["label"] = "battery"
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=1, progress=False)
    with pytest.raises(ValueError, match="non-empty list of label names"):
        tuner.fit(data)
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=1, tune_thresholds=True,
                      progress=False)
    with pytest.raises(ValueError, match="tune_thresholds=True picks thresholds on the validation data"):
        tuner.fit(multilabel_records(8))
    with pytest.raises(ValueError, match="threshold and tune_thresholds are for task='multilabel_classification'"):
        FineTuner("unused", "classification", tune_thresholds=True)
    with pytest.raises(ValueError, match="threshold must be a number in"):
        FineTuner("unused", "multilabel_classification", threshold=1.5)


def test_a_json_list_in_a_csv_cell_is_read_as_the_labels(base_folder, tmp_path):
    import csv

    data = multilabel_records(16)
    path = tmp_path / "tickets.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "tags"])
        writer.writerows([r["text"], json.dumps(r["label"])] for r in data)
    from finetune_lib import DatasetBuilder

    loaded = DatasetBuilder.from_file(path, text="text", label="tags")
    assert [r["label"] for r in loaded.records] == [r["label"] for r in data]  # lists from load on: splits see them
    from_csv = FineTuner(str(base_folder), "multilabel_classification", max_steps=2, progress=False, seed=0)
    from_csv.fit(loaded)
    from_lists = FineTuner(str(base_folder), "multilabel_classification", max_steps=2, progress=False, seed=0)
    from_lists.fit(data)
    assert from_csv.preprocessor.label_names == from_lists.preprocessor.label_names
    assert [r["train/loss"] for r in from_csv.history] == [r["train/loss"] for r in from_lists.history]
    data[0]["label"] = "battery;screen"  # a delimited text: refused, with the way to split it
    with pytest.raises(ValueError, match=r"split\(';'\)"):
        FineTuner(str(base_folder), "multilabel_classification", max_steps=1, progress=False).fit(data)


def test_unknown_label_at_evaluation_is_named(base_folder):
    data = multilabel_records(16)
    tuner = FineTuner(str(base_folder), "multilabel_classification", max_steps=1, progress=False)
    tuner.fit(data)
    with pytest.raises(ValueError, match="Label 'sports'.*never seen"):
        tuner.evaluate([{"text": "a match", "label": ["sports"]}])


def test_single_label_metrics_are_refused():
    from finetune_lib.metrics import Accuracy

    with pytest.raises(ValueError, match="reads 'classes' inputs"):
        FineTuner("unused", "multilabel_classification", metrics=MetricSuite([Accuracy()]))


def test_builder_keeps_lists_dedups_and_stratifies(tmp_path):
    records = multilabel_records(60)
    records.append({"text": records[0]["text"], "label": list(reversed(records[0]["label"])), "lang": "en"})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    builder = DatasetBuilder.from_file(path).deduplicate()
    assert len(builder) == 60 and builder.dedup_counts["label_conflicts"] == 0  # same set, other order
    assert builder.records.label_counts()["other"] == sum("other" in r["label"] for r in records[:60])
    splits = builder.split(validation=0.2, test=0.2, stratify=True, seed=0)
    assert splits.sizes == {"train": 36, "validation": 12, "test": 12}
    for name in ("battery", "screen", "praise", "other"):
        assert all(any(name in r["label"] for r in part) for part in (splits.train, splits.validation, splits.test))
    assert "labels" in splits.report().to_dict()["splits"][0]


def test_cli_config_run(base_folder, tmp_path, capsys):
    from finetune_lib import cli

    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in multilabel_records(60)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""model: {base_folder}
task: multilabel_classification
data: {{path: {data}}}
split: {{validation: 0.2, test: 0.2, stratify: true, seed: 0}}
metrics: [{{multi_label_f1: {{average: macro}}}}, hamming_loss]
training: {{max_steps: 2, batch_size: 8, class_weights: balanced, tune_thresholds: true, progress: false}}
output_dir: {tmp_path / "run"}
""")
    assert cli.main(["train", str(cfg), "--quiet"]) == 0
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(written["metrics"]) == {"loss", "f1_macro", "hamming_loss"}
    saved = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert set(saved["finetune_lib_thresholds"]) == {"battery", "other", "praise", "screen"}
    assert "BCE pos_weight" in (tmp_path / "run" / "final" / "README.md").read_text()
