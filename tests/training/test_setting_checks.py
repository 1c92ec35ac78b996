"""Numeric settings that would silently ruin a run are refused up front, with the fix."""

import re

import numpy as np
import pytest

from finetune_lib import FineTuner
from finetune_lib.training.args import TrainingArgs

from .helpers import classification_records, model_and_tokenizer

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("name,value,fix", [
    ("learning_rate", NAN, "e.g. 5e-5"),
    ("learning_rate", INF, "e.g. 5e-5"),
    ("learning_rate", -1e-3, "e.g. 5e-5"),
    ("learning_rate", True, "e.g. 5e-5"),
    ("max_grad_norm", NAN, "None or 0 turn clipping off"),
    ("max_grad_norm", INF, "None or 0 turn clipping off"),
    ("max_grad_norm", -1.0, "would flip the gradient"),
    ("warmup_ratio", NAN, "fraction of the steps"),
    ("warmup_ratio", 1.0, "fraction of the steps"),
    ("epochs", NAN, "max_steps"),
    ("epochs", INF, "max_steps"),
    ("generation_time_budget", NAN, "None for no limit"),
    ("generation_time_budget", INF, "None for no limit"),
    ("keep_checkpoints", -1, "None keeps them all"),
    ("keep_checkpoints", 0, "None keeps them all"),
    ("keep_checkpoints", 1.5, "None keeps them all"),
    ("batch_size", True, "e.g. 16"),
    ("batch_size", 8.0, "e.g. 16"),
    ("max_steps", False, "None trains for"),
    ("warmup_steps", -1, "Steps of linear warmup"),
    ("eval_every", "steps", "or 'epoch'"),
    ("save_every", 0, "or 'epoch'"),
    ("max_new_tokens", 0, "e.g. 64"),
    ("eval_batch_size", NAN, "2 x batch_size"),
    ("seed", -1, "2**32 - 1"),
    ("seed", 1.0, "2**32 - 1"),
])
def test_bad_numbers_are_refused_with_the_fix(name, value, fix):
    with pytest.raises(ValueError, match=rf"^{name} must be .*got {re.escape(repr(value))}\. .*{re.escape(fix)}"):
        FineTuner("never-loaded", **{name: value})


def test_bools_are_not_numbers_and_flags_are_bools():
    with pytest.raises(ValueError, match="log_every must be a positive integer, got True"):
        TrainingArgs(log_every=True).validate()
    with pytest.raises(ValueError, match="group_by_length must be True or False, got 1"):
        TrainingArgs(group_by_length=1).validate()


def test_accepted_edge_values_and_numpy_scalars():
    args = TrainingArgs(batch_size=np.int64(8), learning_rate=np.float32(1e-3), max_grad_norm=0,
                        keep_checkpoints=None, eval_every=None, warmup_ratio=0.0, epochs=0.5)
    args.validate()
    assert type(args.batch_size) is int and type(args.learning_rate) is float
    TrainingArgs(max_grad_norm=None, generation_time_budget=None, seed=2**32 - 1).validate()


def test_keep_checkpoints_none_keeps_them_all(tmp_path):
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    tuner = FineTuner(model, "classification", tokenizer=tok, output_dir=tmp_path / "run", max_steps=3, batch_size=8,
                      save_every=1, keep_checkpoints=None, progress=False)
    tuner.fit(classification_records(32))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "checkpoint-00000001", "checkpoint-00000002", "checkpoint-00000003"]
