"""The model card: Hub front matter (valid YAML), its sections, metrics with intervals."""

from types import SimpleNamespace

import pytest
import yaml

from finetune_lib.reporting import write_model_card
from finetune_lib.reporting.model_card import front_matter, hub_id
from finetune_lib.reporting.sections import fmt

SECTIONS = ("## Model description", "## Intended uses & limitations", "## Training data", "## Training procedure",
            "### Layer freezing", "### Hyperparameters", "## Validation metrics during training",
            "## Evaluation results", "## How to use", "## Framework versions")


def parse(text):
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_card_written_by_save(tmp_path, fitted):
    tuner, _, _ = fitted
    text = (tuner.save(tmp_path / "final") / "README.md").read_text()
    meta, body = parse(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "finetune_lib" in meta["tags"] and "base_model" not in meta  # a local folder, not a hub id
    for section in SECTIONS:
        assert section in body
    assert 'pipeline("text-classification"' in body
    assert "LayerFreezer(train_last=2)" in body and "trainable:" in body
    assert "`negative`, `positive`" in body


def test_card_with_results_intervals_and_data(tmp_path, fitted):
    tuner, results, data_report = fitted
    path = write_model_card(tuner, tmp_path / "m", results, confidence=0.95, data_report=data_report,
                            base_model="org/tiny-bert")
    meta, body = parse(path.read_text())
    assert meta["base_model"] == "org/tiny-bert"
    assert "| metric | value | 95% interval (low – high) |" in body
    f1 = f"| f1 | {fmt(results['f1'])} | {fmt(results['f1_low'])} – {fmt(results['f1_high'])} |"
    assert f1 in body
    assert "| train | 48 |" in body and "negative:" in body
    assert "| step | epoch | train loss | validation loss | accuracy | f1 |" in body
    for package in ("finetune_lib", "transformers", "torch"):
        assert f"- {package} " in body


def test_card_reads_results_the_tuner_keeps(tmp_path, fitted, monkeypatch):
    tuner, results, _ = fitted
    monkeypatch.setattr(tuner, "last_results", results, raising=False)
    monkeypatch.setattr(tuner, "last_confidence", 0.9, raising=False)
    body = parse(write_model_card(tuner, tmp_path).read_text())[1]
    assert "90% interval" in body and fmt(results["accuracy_high"]) in body


@pytest.mark.parametrize("source,expected", [
    ("bert-base-uncased", "bert-base-uncased"), ("sentence-transformers/all-MiniLM-L6-v2",
                                                 "sentence-transformers/all-MiniLM-L6-v2"),
    ("./not/a hub id", None), (123, None),
])
def test_hub_id(source, expected):
    assert hub_id(source) == expected


def test_hub_id_of_an_existing_folder_is_none(tmp_path):
    (tmp_path / "model").mkdir()
    assert hub_id(str(tmp_path / "model")) is None


@pytest.mark.parametrize("task,tag", [("classification", "text-classification"), ("causal_lm", "text-generation"),
                                      ("seq2seq", "text2text-generation")])
def test_front_matter_per_task(task, tag):
    tuner = SimpleNamespace(model_source="org/base-model", task=SimpleNamespace(name=task))
    meta = yaml.safe_load(front_matter(tuner).strip().strip("-"))
    assert meta == {"library_name": "transformers", "pipeline_tag": tag, "base_model": "org/base-model",
                    "tags": ["finetune_lib", "fine-tuned", tag]}
