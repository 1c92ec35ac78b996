"""Experiment trackers through the real libraries, offline: W&B in offline mode (its run file read
back with W&B's own protobuf records) and MLflow with a local SQLite store (read back with
MlflowClient). Nothing here touches the network."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from finetune_lib import Callback, FineTuner, TrainState
from finetune_lib.testing import StopAt
from finetune_lib.training import MLflowLogger, WandbLogger
from finetune_lib.training.args import TrainingArgs
from finetune_lib.training.loggers import LOGGERS, make_loggers

from .helpers import classification_records, model_and_tokenizer

pytest.importorskip("matplotlib")


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, every folder it writes under tmp_path, no login and no API key. W&B reads the
    environment once per process (its setup singleton): `wandb.teardown()` makes it read it again."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    for name, folder in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "wandb_cache"),
                         ("WANDB_DATA_DIR", "wandb_data"), ("WANDB_CONFIG_DIR", "wandb_config")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(name, str(tmp_path / folder))
    yield tmp_path / "wandb_dir"
    wandb.teardown()


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory):
    """An empty MLflow SQLite store, made once: creating its tables takes seconds."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path, mlflow_template):
    """A fresh local MLflow store for one test (a copy of the empty template)."""
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


class WriteCurves(Callback):
    """Writes the run's curves.png at the end of fit, as a user's reporting step would (user callbacks run
    before the loggers)."""

    def on_fit_end(self, state: TrainState) -> None:
        from finetune_lib.reporting import plot_history

        plot_history(state.history, state.output_dir / "curves.png")


def make_tuner(out: Path, loggers, callbacks=(), **settings) -> FineTuner:
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    options = {"epochs": 2, "batch_size": 8, "log_every": 1, "progress": False, **settings}
    return FineTuner(model, "classification", tokenizer=tok, output_dir=out, loggers=loggers,
                     callbacks=list(callbacks), **options)


def expected_series(history) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of every numeric key of FineTuner.history (what a tracker must hold)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((record["step"], value))
    return series


# ---- reading an offline W&B run back -------------------------------------------------------------------
def wandb_records(path: Path):
    """The records of a `.wandb` transaction log: W&B's header, then LevelDB-log blocks of 32 KiB whose
    chunks (FULL=1, FIRST=2, MIDDLE=3, LAST=4) carry `wandb_internal_pb2.Record` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer
            pos += left
            continue
        chunk, pos = data[pos + 7: pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(pending)


def read_wandb_run(wandb_dir: Path) -> dict:
    """The offline run in `wandb_dir`: config, history rows, final summary, artifacts, exit."""
    import wandb

    wandb.teardown()  # W&B's service writes the file on its own: wait until it is done
    files = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run = {"config": {}, "history": [], "summary": {}, "artifacts": [], "exit": False, "folder": files[0].parent}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["name"], run["project"] = record.run.run_id, record.run.display_name, record.run.project
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.summary.update})
        elif kind == "artifact":
            run["artifacts"].append((record.artifact.type, record.artifact.name,
                                     sorted(e.path for e in record.artifact.manifest.contents)))
        elif kind == "exit":
            run["exit"] = True
    return run


def test_wandb_logs_settings_history_figures_results_and_model(tmp_path, wandb_env):
    data = classification_records(48)
    tracker = WandbLogger(project="finetune-tests", name="tiny-bert")
    tuner = make_tuner(tmp_path / "run", ["jsonl", tracker], callbacks=[WriteCurves()])
    tuner.fit(data[:32], data[32:40])
    results = tuner.evaluate(data[40:])
    tracker.log_results(results, split="test")
    tracker.finish()
    assert tracker.run is None

    run = read_wandb_run(wandb_env)
    assert (run["project"], run["name"], run["exit"]) == ("finetune-tests", "tiny-bert", True)
    config = run["config"]
    assert config["task"] == "classification" and config["epochs"] == 2 and config["batch_size"] == 8
    assert config["learning_rate"] == tuner.args.learning_rate and config["total_steps"] == tuner.state.max_steps
    # every logged value at its optimizer step (train and validation records of one step share a row)
    expected = expected_series(tuner.history)
    assert {"train/loss", "train/lr", "validation/loss", "validation/accuracy"} <= set(expected)
    for key, points in expected.items():
        assert [(row["_step"], row[key]) for row in run["history"] if key in row] == points, key
    # the figure of the run folder, as an image stored in the run's media
    images = [row for row in run["history"] if row.get("plots/curves/_type") == "image-file"]
    assert len(images) == 1 and (run["folder"] / "files" / images[0]["plots/curves/path"]).is_file()
    # evaluate() results in the summary, the last validation results too
    assert run["summary"]["test/accuracy"] == results["accuracy"] and run["summary"]["test/loss"] == results["loss"]
    assert run["summary"]["validation/accuracy"] == tuner.history[-1]["validation/accuracy"]
    assert run["summary"]["eval/accuracy"] == results["accuracy"]  # evaluate() logs its results on its own
    # the model at the end of fit, as a W&B Artifact of type "model"
    (kind, name, paths), = run["artifacts"]
    assert kind == "model" and name == f"model-{run['id']}"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(paths)


def test_wandb_by_name_finishes_its_run_at_the_end_of_fit(tmp_path, wandb_env):
    data = classification_records(40)
    tuner = make_tuner(tmp_path / "run", ["jsonl", "wandb"], epochs=1)
    tuner.fit(data[:32], data[32:])
    tuner.evaluate(data[32:])  # the run is closed: nothing to log into, and no error
    run = read_wandb_run(wandb_env)  # WANDB_DIR and WANDB_MODE from the environment
    assert run["exit"] and run["config"]["epochs"] == 1
    for key, points in expected_series(tuner.history).items():
        assert [(row["_step"], row[key]) for row in run["history"] if key in row] == points, key


# ---- MLflow ---------------------------------------------------------------------------------------------
def metric_points(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_logs_params_metrics_figures_results_and_model(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    data = classification_records(48)
    tracker = MLflowLogger(tracking_uri=mlflow_uri, experiment="finetune-tests", run_name="tiny-bert",
                           artifact_location=tmp_path / "artifacts")
    tuner = make_tuner(tmp_path / "run", ["jsonl", tracker], callbacks=[WriteCurves()])
    tuner.fit(data[:32], data[32:40])
    results = tuner.evaluate(data[40:])
    tracker.log_results(results, split="test")
    tracker.finish()

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("finetune-tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == tracker.run_id
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "tiny-bert" and run.info.status == "FINISHED"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "artifacts")
    params = run.data.params
    assert params["task"] == "classification" and params["epochs"] == "2" and params["batch_size"] == "8"
    assert float(params["learning_rate"]) == tuner.args.learning_rate
    # every logged value at its optimizer step
    expected = expected_series(tuner.history)
    assert {"train/loss", "train/lr", "validation/loss", "validation/accuracy"} <= set(expected)
    for key, points in expected.items():
        assert metric_points(client, tracker.run_id, key) == sorted(points), key
    # evaluate() results, as metrics at the last step
    assert run.data.metrics["test/accuracy"] == results["accuracy"]
    assert metric_points(client, tracker.run_id, "test/loss") == [(tuner.state.step, results["loss"])]
    assert metric_points(client, tracker.run_id, "eval/loss") == [(tuner.state.step, results["loss"])]  # on its own
    # the model folder and the figure as artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(tracker.run_id, "model")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files
    assert [a.path for a in client.list_artifacts(tracker.run_id, "plots")] == ["plots/curves.png"]


def test_mlflow_by_name_uses_the_environment_and_resume_continues_the_run(tmp_path, mlflow_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working folder
    data = classification_records(40)
    first = make_tuner(tmp_path / "run", ["mlflow"], callbacks=[StopAt(3)], save_every=2)
    first.fit(data[:32], data[32:])  # stops after step 3; the checkpoint of step 2 holds the run id
    second = make_tuner(tmp_path / "run", ["mlflow"], save_every=2)
    second.fit(data[:32], data[32:], resume=True)

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("from-env").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run, continued
    run_id = runs[0].info.run_id
    for key, points in expected_series(second.history).items():
        logged = dict(metric_points(client, run_id, key))  # step 3 was logged twice, with the same value
        assert sorted(logged.items()) == sorted(points), key


# ---- names, missing packages, other ranks ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_package_fails_when_the_tuner_is_made(name, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    with pytest.raises(ImportError, match=rf"pip install 'finetune_lib\[{name}\]'"):
        FineTuner(model, "classification", tokenizer=tok, loggers=["jsonl", name])
    with pytest.raises(ImportError, match=rf"finetune_lib\[{name}\]"):
        (WandbLogger if name == "wandb" else MLflowLogger)()


def test_names_make_trackers_and_unknown_names_list_them(wandb_env):
    pytest.importorskip("mlflow")
    assert "wandb" in LOGGERS and "mlflow" in LOGGERS
    made = make_loggers(["wandb", "mlflow"], None)  # no run folder needed
    assert [type(c).__name__ for c in made] == ["WandbLogger", "MLflowLogger"]
    assert made[0].finish_at_fit_end and made[0].run is None and made[1].client is None  # nothing started yet
    with pytest.raises(ValueError, match=r"Unknown logger 'neptune'.*'wandb', 'mlflow'"):
        make_loggers(["neptune"], None)


def test_other_ranks_log_nothing(tmp_path, wandb_env):
    pytest.importorskip("mlflow")
    state = TrainState(model=torch.nn.Linear(1, 1), args=TrainingArgs(), output_dir=tmp_path, step=1,
                       record={"step": 1, "epoch": 0.5, "train/loss": 0.5}, is_main_process=False)
    trackers = [WandbLogger(dir=tmp_path / "wb"), MLflowLogger(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")]
    for tracker in trackers:
        for event in ("on_fit_start", "on_log", "on_eval_end", "on_fit_end"):
            getattr(tracker, event)(state)
    assert trackers[0].run is None and trackers[1].run_id is None
    assert not (tmp_path / "wb").exists() and not (tmp_path / "mlflow.db").exists()
    assert not list(wandb_env.iterdir())


def fake_state(tmp_path) -> TrainState:
    return TrainState(model=torch.nn.Linear(1, 1), args=TrainingArgs(epochs=3), output_dir=tmp_path, step=1,
                      record={"step": 1, "epoch": 0.5, "train/loss": 0.5})


def test_mlflow_logs_into_your_active_run_and_leaves_it_open(tmp_path, mlflow_uri, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.chdir(tmp_path)
    state, client = fake_state(tmp_path), MlflowClient(tracking_uri=mlflow_uri)
    with mlflow.start_run() as mine:
        tracker = MLflowLogger(log_model=False)
        for event in ("on_fit_start", "on_log", "on_fit_end"):
            getattr(tracker, event)(state)
        tracker.finish()
        assert tracker.run_id == mine.info.run_id and client.get_run(mine.info.run_id).info.status == "RUNNING"
    run = client.get_run(mine.info.run_id)
    assert run.data.metrics == {"train/loss": 0.5} and run.data.params["epochs"] == "3"


def test_wandb_logs_into_your_own_run_and_leaves_it_open(tmp_path, wandb_env):
    import wandb

    state = fake_state(tmp_path)
    mine = wandb.init(project="mine")
    tracker = WandbLogger(log_model=False)
    for event in ("on_fit_start", "on_log", "on_fit_end"):
        getattr(tracker, event)(state)
    tracker.finish()
    assert tracker.run_id == mine.id and wandb.run is mine  # still open: it is yours to finish
    mine.finish()
    run = read_wandb_run(wandb_env)
    assert run["project"] == "mine" and run["config"]["epochs"] == 3
    assert [row["train/loss"] for row in run["history"] if "train/loss" in row] == [0.5]
