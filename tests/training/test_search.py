"""hyperparameter_search: trials score what a hand-made FineTuner scores, pruning stops trials at an
evaluation, a study resumes from its storage, and bad spaces, builds and metrics fail before training."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from finetune_lib import FineTuner, LayerFreezer, hyperparameter_search

from .helpers import classification_records, model_and_tokenizer

optuna = pytest.importorskip("optuna")

TRAIN, VALIDATION = classification_records(48, seed=0), classification_records(24, seed=1)
SPACE = {"learning_rate": (1e-4, 1e-2, "log"), "train_last": [1, 2]}


class Build:
    """A build function that counts its calls and records the folders it is given."""

    def __init__(self):
        self.calls, self.output_dirs = 0, []

    def __call__(self, learning_rate: float, train_last: int = 2, output_dir=None) -> FineTuner:
        self.calls += 1
        self.output_dirs.append(output_dir)
        model, tok = model_and_tokenizer("bert", "classification", num_labels=2)  # a fresh model each trial
        return FineTuner(model, tokenizer=tok, freezer=LayerFreezer(train_last=train_last),
                         learning_rate=learning_rate, epochs=2, batch_size=8, eval_every=3, log_every=3,
                         progress=False, output_dir=output_dir)


def search(build=None, **kw):
    kw = {"space": SPACE, "n_trials": 3, "metric": "accuracy", **kw}
    return hyperparameter_search(build or Build(), TRAIN, VALIDATION, **kw)


def test_best_trial_and_values_match_a_hand_made_run():
    build = Build()
    study = search(build, metric="validation/loss")
    assert build.calls == 3 and len(study.trials) == 3
    assert study.direction.name == "MINIMIZE"  # inferred from "loss"
    values = [t.value for t in study.trials]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert study.best_value == min(values)
    assert len({t.params["learning_rate"] for t in study.trials}) == 3  # the sampler tried different values
    # the reference: the best params by hand, fit and evaluate -> the same loss
    tuner = build(**study.best_params)
    tuner.fit(TRAIN, VALIDATION)
    assert tuner.evaluate(VALIDATION)["loss"] == pytest.approx(study.best_value, rel=1e-6)
    assert study.best_trial.user_attrs["results"]["loss"] == study.best_value
    # each trial reported its validation loss at the evaluations during fit (every 3 of 12 steps)
    assert sorted(study.trials[0].intermediate_values) == [3, 6, 9, 12]


def test_seeded_sampler_repeats_its_choices():
    first, second = search(n_trials=2, seed=3), search(n_trials=2, seed=3)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.value for t in first.trials] == [t.value for t in second.trials]


def test_pruned_trials_stop_at_an_evaluation():
    # accuracy is never above 1.1: the threshold pruner prunes every trial at its first evaluation
    study = search(pruner=optuna.pruners.ThresholdPruner(lower=1.1), n_trials=2)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    for trial in study.trials:
        assert list(trial.intermediate_values) == [3]  # training ended there (12 steps were planned)
        assert trial.value == trial.intermediate_values[3]  # optuna keeps a pruned trial's last report
        assert "results" not in trial.user_attrs  # no final evaluation


def test_no_pruning_runs_every_trial_to_the_end():
    study = search(pruning=False, n_trials=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    with pytest.raises(ValueError, match="pruning=False with a pruner"):
        search(pruning=False, pruner=optuna.pruners.ThresholdPruner(lower=1.1))


def test_resume_runs_only_the_missing_trials(tmp_path):
    storage = tmp_path / "search" / "study.db"
    first = search(n_trials=2, storage=storage)
    before = [(t.params, t.value) for t in first.trials]
    build = Build()
    second = search(build, n_trials=3, storage=storage)
    assert build.calls == 1 and len(second.trials) == 3
    assert [(t.params, t.value) for t in second.trials[:2]] == before
    assert second.trials[2].params not in [p for p, _ in before]  # the reseeded sampler does not repeat trial 0
    again = Build()
    assert len(search(again, n_trials=3, storage=storage).trials) == 3 and again.calls == 0
    with pytest.raises(ValueError, match="same direction"):
        search(n_trials=4, storage=storage, direction="minimize")
    with pytest.raises(ValueError, match="same metric"):
        search(n_trials=4, storage=storage, metric="f1")


def test_output_dir_holds_the_summary_plot_and_trial_folders(tmp_path):
    build = Build()
    study = search(build, n_trials=2, output_dir=tmp_path)
    assert build.output_dirs == [tmp_path / "trial-0", tmp_path / "trial-1"]
    assert (tmp_path / "trial-0" / "log.jsonl").is_file() and (tmp_path / "trial-1" / "log.jsonl").is_file()
    assert not (tmp_path / "trial-0" / ".lock").exists()  # each trial's run lock was released
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["metric"] == "accuracy" and summary["direction"] == "maximize"
    assert [t["value"] for t in summary["trials"]] == [t.value for t in study.trials]
    assert [t["params"] for t in summary["trials"]] == [t.params for t in study.trials]
    assert summary["best"]["value"] == study.best_value and summary["best"]["params"] == study.best_params
    assert summary["trials"][0]["output_dir"] == str(tmp_path / "trial-0")
    assert (tmp_path / "search.png").stat().st_size > 1000


def test_without_matplotlib_the_plot_is_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.INFO, logger="finetune_lib.search_plot"):
        search(n_trials=1, output_dir=tmp_path)
    assert (tmp_path / "search.json").is_file() and not (tmp_path / "search.png").exists()
    assert "pip install 'finetune_lib[plots]'" in caplog.text


def test_a_shared_run_folder_is_refused(tmp_path):
    def build(learning_rate):
        model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
        return FineTuner(model, tokenizer=tok, learning_rate=learning_rate, max_steps=2, batch_size=8,
                         progress=False, output_dir=tmp_path / "run")

    with pytest.raises(ValueError, match="output_dir of an earlier trial"):
        search(build, space={"learning_rate": (1e-4, 1e-2)}, n_trials=2)


def test_a_reused_model_object_is_refused():
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)

    def build(learning_rate):
        return FineTuner(model, tokenizer=tok, learning_rate=learning_rate, max_steps=2, batch_size=8, progress=False)

    with pytest.raises(ValueError, match="same model object"):
        search(build, space={"learning_rate": (1e-4, 1e-2)}, n_trials=2)


@pytest.mark.parametrize("space,message", [
    ({"learning_rate": (1e-3, 1e-4)}, "low must be below high"),
    ({"learning_rate": (0.0, 1e-3, "log")}, "log scale needs low > 0"),
    ({"learning_rate": (1e-4, 1e-3, "cubic")}, "the scale"),
    ({"learning_rate": (1e-4,)}, "a range is"),
    ({"learning_rate": []}, "empty list"),
    ({"learning_rate": [1e-4, 1e-4]}, "repeats a value"),
    ({"learning_rate": [object()]}, "choices must be"),
    ({"learning_rate": {1e-4, 1e-3}}, "not understood"),
    ({}, "non-empty dict"),
    ({"learning_rate": 1e-3, "dropout": (0.0, 0.3)}, "build does not take 'dropout'"),
    ({"train_last": [1, 2]}, "build needs 'learning_rate'"),
    ({"learning_rate": 1e-3, "output_dir": "x"}, "cannot be searched"),
])
def test_bad_spaces_fail_before_any_trial(space, message):
    build = Build()
    with pytest.raises(ValueError, match=message):
        search(build, space=space)
    assert build.calls == 0


@pytest.mark.parametrize("kw,message", [
    ({"metric": "train/loss"}, "scored on the validation data"),
    ({"direction": "up"}, "direction must be"),
    ({"n_trials": 0}, "n_trials must be"),
])
def test_bad_settings_fail_before_any_trial(kw, message):
    build = Build()
    with pytest.raises(ValueError, match=message):
        search(build, **kw)
    assert build.calls == 0


def test_an_unknown_metric_fails_at_the_first_evaluation():
    build = Build()
    with pytest.raises(ValueError, match="'f2' is not among the evaluation results; choose one of .*'accuracy'"):
        search(build, metric="f2")
    assert build.calls == 1


def test_a_build_taking_any_keyword_takes_the_whole_space():
    seen = []

    def build(**params):
        seen.append(params)
        return Build()(**params)

    study = search(build, space={**SPACE, "train_last": 1}, n_trials=1)
    assert seen[0]["train_last"] == 1 and study.best_params["train_last"] == 1  # a fixed value is in the params


def test_missing_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    build = Build()
    with pytest.raises(ImportError, match=r"pip install 'finetune_lib\[optuna\]'"):
        search(build)
    assert build.calls == 0
