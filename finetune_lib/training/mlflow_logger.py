"""`MLflowLogger`: a run's settings, records, figures and final model in MLflow.

Needs ``pip install 'finetune_lib[mlflow]'``; mlflow is imported when the logger is made (so a
missing package fails when `FineTuner` is constructed, before any training), and the MLflow run is
created at the first `fit`. It talks to MLflow through an ``MlflowClient`` and never touches
MLflow's process-wide active run, so your own ``mlflow.start_run()`` blocks are left alone (and
used: with no `tracking_uri`/`experiment` given, an active run receives the logs). MLflow's
environment variables keep working: ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``,
``MLFLOW_EXPERIMENT_ID``, and the credentials your server needs.

Example:
    >>> from finetune_lib.training import MLflowLogger
    >>> tracker = MLflowLogger(tracking_uri="sqlite:///mlflow.db", experiment="reviews")  # doctest: +SKIP
    >>> tuner = FineTuner(model, output_dir="runs/a", loggers=["jsonl", tracker])         # doctest: +SKIP
    >>> tuner.fit(splits.train, splits.validation)                                       # doctest: +SKIP
    >>> tracker.log_results(tuner.evaluate(splits.test), split="test")                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..events import TrainState
from .distributed import is_main_process
from .tracking import TrackerCallback, figures, require, run_settings, save_model, scalars

__all__ = ["MLflowLogger"]

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
BATCH = 100  # parameters per log_batch call (MLflow's limit)
_BAD_KEY = re.compile(r"[^\w./\- ]")  # MLflow keys: letters, digits, _ - . / and spaces


def _location(location: str | Path | None) -> str | None:
    """An artifact location as MLflow takes it: a URI as given (``s3://...``), a local folder made absolute."""
    if location is None or "://" in str(location):
        return None if location is None else str(location)
    return str(Path(location).resolve())


def mlflow_key(key: str) -> str:
    """A record key as MLflow accepts it (other characters become ``_``).

    Example:
        >>> mlflow_key("validation/f1[group=a]")
        'validation/f1_group_a_'
    """
    return _BAD_KEY.sub("_", str(key))


class MLflowLogger(TrackerCallback):
    """Logs a run to MLflow: its settings as parameters, every logged record as metrics at its
    optimizer step (``train/loss``, ``train/lr``, ``validation/<metric>``, ...), the PNG figures
    found in the run folder as artifacts under ``plots/``, and the model at the end of `fit` as
    artifacts under ``model/`` (``save_pretrained`` of the model and tokenizer).

    The MLflow run is created at the first `fit` and marked finished at its end; `log_results` (the
    `evaluate()` results, as ``<split>/<key>`` metrics), `log_model` and `finish` still write to it
    afterwards. The run id is kept in checkpoints: `fit(resume=True)` continues the same MLflow run
    (metrics of steps after the checkpoint that the interrupted run logged stay in its history).
    Under torchrun only rank 0 logs.

    Args:
        tracking_uri: where runs are stored: ``"sqlite:///mlflow.db"``, ``"http://server:5000"``,
            a folder, ... (default: ``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``, else
            MLflow's default).
        experiment: the experiment's name, created when missing (default: ``MLFLOW_EXPERIMENT_NAME``,
            else ``MLFLOW_EXPERIMENT_ID``, else MLflow's "Default" experiment).
        run_name: the run's name (default: MLflow's generated one).
        log_model: log the model as artifacts at the end of `fit`.
        artifact_location: where a newly created experiment keeps its artifacts: a folder or a URI
            such as ``s3://bucket/path`` (default: MLflow's).
        tags: tags of the run.

    Raises:
        ImportError: when mlflow is not installed (``pip install 'finetune_lib[mlflow]'``).

    Example:
        >>> tuner = FineTuner(model, loggers=[MLflowLogger(tracking_uri="sqlite:///x.db")])  # doctest: +SKIP
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 log_model: bool = True, artifact_location: str | Path | None = None,
                 tags: Mapping[str, str] | None = None):
        self._mlflow = require("mlflow", "mlflow", "MLflowLogger")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.log_model_at_end = log_model
        self.artifact_location = _location(artifact_location)
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.client: Any = None  # the MlflowClient, from the first fit on
        self._reset_run_state()

    # ---- events ---------------------------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        if not is_main_process(state):
            return
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri)  # None: MLFLOW_TRACKING_URI, ...
        if self.run_id is None or not self._exists(self.run_id):
            self._start()
        elif self._owns_run or not self._is_active_run(self.run_id):  # a run of ours, continued (resume)
            self._owns_run = True
            self.client.update_run(self.run_id, status="RUNNING")
        self._output_dir = state.output_dir
        self.step = max(self.step, state.step)
        self._log_params(run_settings(state))

    def on_log(self, state: TrainState) -> None:
        if self.run_id is None or self.client is None or not is_main_process(state):
            return
        self.step = int(state.record.get("step", state.step))
        self._log_metrics(scalars(state.record), self.step)

    def on_fit_end(self, state: TrainState) -> None:
        if self.run_id is None or self.client is None or not is_main_process(state):
            return
        self._log_figures()
        if self.log_model_at_end:
            with tempfile.TemporaryDirectory(prefix="finetune_lib-model-") as folder:
                if save_model(state, Path(folder)):
                    self.log_model(folder)
        if self._owns_run:
            self.client.set_terminated(self.run_id)

    # ---- after fit ------------------------------------------------------------------------------------
    def log_results(self, results: Mapping[str, Any], split: str = "test") -> None:
        """Log `evaluate()` results as metrics ``<split>/<key>`` (e.g. ``test/accuracy``) at the last step.

        Example:
            >>> tracker.log_results(tuner.evaluate(splits.test), split="test")   # doctest: +SKIP
        """
        if not is_main_process():
            return
        self._check_run("log_results")
        self._log_metrics({f"{split}/{k}": v for k, v in scalars(results).items()}, self.step)

    def log_model(self, path: str | Path, artifact_path: str = "model") -> None:
        """Log a model folder (e.g. what `FineTuner.save` returns) as the run's artifacts under `artifact_path`.

        Example:
            >>> tracker.log_model(tuner.save("runs/a/final"), artifact_path="final")   # doctest: +SKIP
        """
        if not is_main_process():
            return
        self._check_run("log_model")
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def finish(self) -> None:
        """Log the figures written to the run folder since `fit` ended (a confusion matrix, say), and
        mark the run finished (a run you started yourself is left as it is)."""
        if self.run_id is None or self.client is None or not is_main_process():
            return
        self._log_figures()
        if self._owns_run:
            self.client.set_terminated(self.run_id)

    # ---- internals ------------------------------------------------------------------------------------
    def _start(self) -> None:
        active = self._mlflow.active_run()
        if active is not None and self.tracking_uri is None and self.experiment is None:
            self.run_id, self._owns_run = active.info.run_id, False  # your mlflow.start_run(): log into it
            return
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags=self.tags or None)
        self.run_id, self._owns_run = run.info.run_id, True

    def _experiment_id(self) -> str:
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if name is None:
            return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")  # "0" is MLflow's Default experiment
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        if found.lifecycle_stage != "active":
            raise ValueError(f"MLflow experiment {name!r} is deleted. Restore it (mlflow experiments restore "
                             f"--experiment-id {found.experiment_id}) or choose another experiment name.")
        return found.experiment_id

    def _exists(self, run_id: str) -> bool:
        try:
            found = self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # another tracking store
            found = False
        if not found:
            log.warning("MLflow run %s (from the checkpoint) is not in %s or was deleted; starting a new run.",
                        run_id, self.client.tracking_uri)
        return found

    def _is_active_run(self, run_id: str) -> bool:
        """Whether `run_id` is the run of your own ``mlflow.start_run()`` block."""
        active = self._mlflow.active_run()
        return active is not None and active.info.run_id == run_id

    def _check_run(self, what: str) -> None:
        if self.run_id is None or self.client is None:
            raise RuntimeError(f"{what}() needs the MLflow run, which the first fit() creates: call it after fit().")

    def _log_params(self, settings: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        params = {mlflow_key(k): str(v)[:MAX_PARAM_LENGTH] for k, v in settings.items()}
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:  # MLflow parameters cannot change once logged
            log.warning("MLflow keeps the first value of parameters %s; this fit uses other values.",
                        ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[i: i + BATCH])

    def _log_metrics(self, values: Mapping[str, float | int], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _log_figures(self) -> None:
        root = self._output_dir
        for path in self._figures.take(figures(root)):
            folder = path.parent.relative_to(root) if root is not None else Path()
            self.client.log_artifact(self.run_id, str(path), (Path("plots") / folder).as_posix())
