"""RunInfo, the narrow input of reporting: built from a FineTuner with what the run really used, plain data,
no paths of this machine, readable regularizer descriptions; reporting imports nothing of the trainer."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_lib.regularizers import (
    L2SP,
    Dropout,
    EarlyStopping,
    LabelSmoothing,
    OverfittingMonitor,
    RDrop,
    ReinitTopBlocks,
    WeightDecay,
)
from finetune_lib.reporting import RunInfo, as_run_info, run_info_from_tuner
from finetune_lib.reporting.run_info import describe, display_path, plain_value, source_name


def test_importing_reporting_does_not_import_the_trainer():
    code = ("import sys, finetune_lib.reporting; "
            "print(sorted(m for m in sys.modules if m.startswith('finetune_lib.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"finetune_lib.reporting imported {out}"


def test_reporting_sources_import_nothing_from_training():
    folder = Path(__file__).resolve().parents[2] / "finetune_lib" / "reporting"
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "..training" not in text and "finetune_lib.training" not in text.replace(
            "finetune_lib.training.summary", ""), path.name


def test_builder_is_also_importable_beside_the_trainer():
    from finetune_lib.training.summary import run_info_from_tuner as again

    assert again is run_info_from_tuner


@pytest.mark.parametrize("source,shown", [
    ("/home/someone/models/tiny-bert", "tiny-bert"), ("/home/someone/models/tiny-bert/", "tiny-bert"),
    ("C:\\Users\\someone\\tiny-bert", "tiny-bert"), ("runs/a/final", "final"), ("org/model", "org/model"),
    ("bert-base-uncased", "bert-base-uncased"), (Path("/srv/x/y"), "y"),
])
def test_source_name_never_shows_the_folders_above(source, shown):
    assert source_name(source) == shown


def test_source_name_of_a_model_object_uses_its_config():
    model = torch.nn.Linear(1, 1)
    assert source_name(model) == "Linear"
    model.config = type("Config", (), {"name_or_path": "/home/someone/ckpt/bert-small"})()
    assert source_name(model) == "bert-small"


def test_display_path():
    assert display_path("runs/a") == "runs/a" and display_path("/home/me/runs/a") == "a" and display_path(None) is None


def test_builtin_regularizers_describe_themselves():
    assert [describe(r) for r in (
        WeightDecay(0.01), Dropout(0.1), Dropout(0.2, attention=0.0), LabelSmoothing(0.1), L2SP(0.01, exclude="cls*"),
        RDrop(1.0), ReinitTopBlocks(2), OverfittingMonitor(patience=2),
        EarlyStopping(monitor="validation/f1", patience=2), EarlyStopping(restore_best=False, min_delta=0.01),
    )] == [
        "weight decay 0.01 (not on biases and normalization weights)",
        "dropout 0.1 (hidden, attention and classifier)",
        "dropout 0.2 (attention 0, classifier 0.2)",
        "label smoothing 0.1",
        "L2-SP 0.01 (pull toward the pretrained weights), excluding cls*",
        "R-Drop 1 (consistency between two dropout masks)",
        "re-initialized the top 2 blocks before training",
        "overfitting monitor on validation/loss against train/loss, patience 2 (warns only)",
        "early stopping on validation/f1 (higher is better), patience 2, best weights restored",
        "early stopping on validation/loss (lower is better), patience 3, min_delta 0.01, last weights kept",
    ]


def test_describe_falls_back_to_str_and_survives_a_failing_describe():
    class Mine:
        def __repr__(self):
            return "Mine(alpha=" + "9" * 300 + ")"

    class Broken:
        def describe(self):
            raise RuntimeError("no")

    assert describe(Mine()) == "Mine(alpha=" + "9" * 300 + ")"  # whole, never cut
    assert describe(Broken()) == "Broken"


def test_plain_value_names_callables():
    def my_schedule(step, total):
        return 1.0

    assert plain_value(my_schedule) == "test_plain_value_names_callables.<locals>.my_schedule()"
    assert plain_value(functools.partial(torch.optim.SGD, momentum=0.9)) == "partial(SGD)"
    assert plain_value({"a": [1, Path("/x/y")]}) == {"a": [1, "y"]}


def test_as_run_info():
    run = RunInfo(task="classification", base_model="m")
    assert as_run_info(run) is run
    with pytest.raises(TypeError, match="RunInfo or a FineTuner"):
        as_run_info(object())

    class OwnTrainer:
        def run_info(self):
            return run

    assert as_run_info(OwnTrainer()) is run


def test_run_info_from_a_fitted_tuner_is_what_the_run_used(fitted, base_folder):
    tuner, results, _ = fitted
    info = run_info_from_tuner(tuner)
    assert info.task == "classification" and info.base_model == "tiny-bert" and info.base_model_hub_id is None
    assert str(base_folder.parent) not in repr(info)
    assert info.settings["weight_decay"] == 0.0 and info.settings["optimizer"] == "AdamW"
    assert info.settings["learning_rate"] == tuner.args.learning_rate
    assert info.label_names == ["negative", "positive"] and info.max_length == tuner.preprocessor.max_length == 128
    assert info.prompt_format is None and info.freezer == "LayerFreezer(train_last=2)"
    assert info.freeze_summary.trainable == sum(p.numel() for p in tuner.model.parameters() if p.requires_grad)
    assert info.steps == tuner.history[-1]["step"] and info.weights_step == info.steps
    assert info.stopped_early_at is None and info.early_stopping_monitor is None
    assert info.metrics == ["accuracy", "f1", "confusion_matrix"]
    assert info.results == results and info.confidence == 0.95
    assert info.encode_counts["train"] == (48, 0)
    info.history.append({"step": 999})  # a copy: the card cannot change the tuner
    assert tuner.history[-1]["step"] != 999


def test_run_info_of_an_early_stopped_run(stopped):
    info = run_info_from_tuner(stopped)
    assert info.settings["weight_decay"] == 0.01 == stopped.weight_decay
    assert (info.steps, info.weights_step, info.stopped_early_at) == (8, 4, 8)
    assert info.early_stopping_monitor == "validation/planted" and info.run_folder == "es"


def test_prompt_format_and_chat_template_follow_the_tokenizer():
    from types import SimpleNamespace

    from finetune_lib import Preprocessor
    from finetune_lib.reporting.tuner_info import prompt_format

    pre = Preprocessor(prompt_template="Q: {prompt}", use_chat_template=True, max_length=64)
    with_template = SimpleNamespace(chat_template="{{ messages }}")
    without = SimpleNamespace(chat_template=None)
    assert "chat template" in prompt_format("causal_lm", pre, with_template)
    assert "has no chat template, so none was applied" in prompt_format("causal_lm", pre, without)
    assert prompt_format("classification", pre, with_template) is None
    text = prompt_format("seq2seq", pre, with_template)
    assert text.startswith("the encoder input is the record's `prompt` formatted with the template `'Q: {prompt}'`")
    assert "each is cut to 64 tokens" in text
