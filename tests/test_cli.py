"""`python -m finetune_lib train|evaluate`: configs, flags, errors, results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_lib import cli
from finetune_lib.testing import sample_texts, save_tiny_pretrained

GOOD = {"great", "excellent", "perfectly", "helpful"}

CONFIG = """\
model: {model}
task: classification
data: {{path: {data}, text: review, label: sentiment}}
deduplicate: true
split: {{validation: 0.1, test: 0.2, stratify: true, seed: 0}}
preprocessor: {{max_length: 32}}
freezer: {{train_last: 2}}
regularizers:
  - WeightDecay: 0.01
  - early_stopping: {{monitor: validation/f1, patience: 2}}
metrics: [accuracy, {{f1: {{average: macro}}}}]
training: {{epochs: 1, batch_size: 8, learning_rate: 1e-3, progress: false}}
output_dir: {output}
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_pretrained(root / "model", arch="bert", task="classification")
    data = root / "reviews.jsonl"
    with open(data, "w") as f:
        for text in sample_texts(60, seed=0, max_words=10):
            f.write(json.dumps({"review": text, "sentiment": "pos" if GOOD & set(text.split()) else "neg"}) + "\n")
    return {"model": model, "data": data}


def write_config(path: Path, assets: dict[str, Path], output: Path, extra: str = "") -> Path:
    path.write_text(CONFIG.format(model=assets["model"], data=assets["data"], output=output) + extra)
    return path


def test_train_from_yaml_in_process(assets, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "run")
    assert cli.main(["train", str(cfg), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert printed["metrics"] == written["metrics"]
    assert set(written["metrics"]) == {"loss", "accuracy", "f1"}
    assert written["evaluated_on"] == "test" and written["sizes"]["test"] > 0
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert (tmp_path / "run" / "log.jsonl").is_file()
    # the regularizers and the freezer were built from their names
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_train_subprocess(assets, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "finetune_lib", "train", str(cfg)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)  # standard output holds only the JSON results
    assert results["metrics"]["accuracy"] >= 0
    assert "precision: fp32" in proc.stderr or "precision:" in proc.stderr  # logs go to standard error


def test_flags_map_onto_the_api(assets, tmp_path, capsys):
    out = tmp_path / "flags"
    argv = ["train", "--model", str(assets["model"]), "--task", "classification", "--data", str(assets["data"]),
            "--text", "review", "--label", "sentiment", "--epochs", "1", "--max-steps", "2", "--batch-size", "8",
            "--test", "0.2", "--validation", "0", "--max-length", "24", "--train-last", "1",
            "--regularizer", "weight_decay=0.01", "--metric", "accuracy", "--output-dir", str(out),
            "--set", "training.progress=false", "--set", "training.seed=3", "--quiet"]
    assert cli.main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["steps"] == 2 and set(results["metrics"]) == {"loss", "accuracy"}
    assert results["sizes"]["validation"] == 0
    run = json.loads((out / "run.json").read_text())["fingerprint"]
    assert run["seed"] == 3 and run["max_length"] == 24 and "train_last=1" in run["freezer"]


def test_config_from_flags_overrides_the_file(assets, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "run")
    ns = cli.build_parser().parse_args(["train", str(cfg), "--epochs", "2", "--learning-rate", "3e-4",
                                        "--set", "split.seed=5", "--regularizer", "Dropout=0.2", "--clean",
                                        "html,whitespace", "--resume"])
    config = cli.config_from_args(ns)
    assert config["training"]["epochs"] == 2 and config["training"]["learning_rate"] == 3e-4
    assert config["training"]["batch_size"] == 8  # kept from the file
    assert config["split"]["seed"] == 5 and config["split"]["stratify"] is True
    assert config["regularizers"][-1] == {"Dropout": 0.2}
    assert config["preprocessor"]["clean"] == ["html", "whitespace"] and config["resume"] is True


def test_unknown_key_fails_before_loading(assets, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "run", extra="epochs: 3\n")
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'epochs'" in err
    for key in cli.KNOWN_KEYS:
        assert key in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    ("freezer: {train_lats: 2}\n", "unknown key(s) 'train_lats' in freezer"),
    ("training: {epoch: 1}\n", "unknown key(s) 'epoch' in training"),
    ("training: {weight_decay: 0.01}\n", "WeightDecay(0.01)"),
    ("training: {cpu_memory_reuse: false}\n", "cpu_speedups=True"),
    ("regularizers: [Nope]\n", "unknown regularizer 'Nope'"),
    ("metrics: [{f1: {avg: macro}}]\n", "unknown key(s) 'avg' in metric F1"),
    ("split: {valid: 0.1}\n", "unknown key(s) 'valid' in split"),
    ("task: ranking\n", "task must be one of"),
    ("training: {loggers: [jsonl, neptune]}\n", "training: loggers: "),
    ("training: {loggers: jsonl}\n", "loggers must be a list of names"),
    ("task: regression\ntraining: {class_weights: balanced}\n", "class_weights is for tasks with classes"),
])
def test_invalid_settings_fail_before_loading(tmp_path, capsys, extra, message):
    # the data file does not exist: the error must come from the settings, found first
    base = {"model": "no/such/model", "data": {"path": str(tmp_path / "missing.jsonl")}}
    cfg = tmp_path / "cfg.json"
    import yaml

    cfg.write_text(json.dumps({**base, **yaml.safe_load(extra)}))
    assert cli.main(["train", str(cfg), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_command_with_json_config(assets, tmp_path, capsys):
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"model": str(assets["model"]), "data": {"path": str(assets["data"]), "text": "review",
                                                                       "label": "sentiment"},
                               "metrics": ["accuracy"], "output_dir": str(tmp_path / "ev")}))
    assert cli.main(["evaluate", str(cfg), "--quiet"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["size"] == 60 and set(results["metrics"]) == {"loss", "accuracy"}
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"] == results["metrics"]


def test_loggers_key_writes_the_named_logs(assets, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "run")
    text = cfg.read_text().replace("progress: false}", "progress: false, loggers: [jsonl, csv]}")
    cfg.write_text(text)
    assert cli.main(["train", str(cfg), "--quiet"]) == 0
    capsys.readouterr()
    assert (tmp_path / "run" / "log.csv").is_file() and (tmp_path / "run" / "log.jsonl").is_file()


def test_regression_and_token_classification_from_configs(tmp_path, capsys):
    """The CLI runs the new tasks end to end from a config: data columns, the task, results and a saved model."""
    from finetune_lib.testing import tiny_model, tiny_wordpiece_tokenizer

    folder = tmp_path / "model"
    tok = tiny_wordpiece_tokenizer()
    tiny_model("bert", "classification", vocab_size=len(tok)).save_pretrained(folder)  # a base encoder with a head
    tok.save_pretrained(folder)
    texts = sample_texts(40, seed=2, max_words=8)
    (tmp_path / "scores.jsonl").write_text("".join(
        json.dumps({"review": t, "score": float(len(t.split()))}) + "\n" for t in texts))
    (tmp_path / "ner.jsonl").write_text("".join(
        json.dumps({"words": t.split(), "ner": ["B-ITEM" if w in GOOD else "O" for w in t.split()]}) + "\n"
        for t in texts))
    runs = {
        "regression": {"data": {"path": str(tmp_path / "scores.jsonl"), "text": "review", "label": "score"},
                       "keys": {"mse", "mae", "r2", "pearson", "spearman"}},
        "token_classification": {"data": {"path": str(tmp_path / "ner.jsonl"), "tokens": "words", "tags": "ner"},
                                 "keys": {"precision", "recall", "f1", "accuracy"}},
    }
    for task, run in runs.items():
        cfg = tmp_path / f"{task}.json"
        cfg.write_text(json.dumps({"model": str(folder), "task": task, "data": run["data"],
                                   "split": {"validation": 0.0, "test": 0.25, "seed": 0},
                                   "training": {"epochs": 1, "batch_size": 8, "progress": False},
                                   "output_dir": str(tmp_path / task)}))
        assert cli.main(["train", str(cfg), "--quiet"]) == 0, task
        results = json.loads(capsys.readouterr().out)
        assert run["keys"] <= set(results["metrics"]), (task, results["metrics"])
        config = json.loads((tmp_path / task / "final" / "config.json").read_text())
        if task == "regression":
            assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
            assert config["problem_type"] == "regression"
        else:
            assert set(config["id2label"].values()) == {"O", "B-ITEM", "I-ITEM"}
