"""`WandbLogger`: a run's settings, records, figures and final model in Weights & Biases.

Needs ``pip install 'finetune_lib[wandb]'``; wandb is imported when the logger is made (so a missing
package fails when `FineTuner` is constructed, before any training), and a run starts at the first
`fit`. W&B's own environment variables keep working (``WANDB_MODE=offline``, ``WANDB_DIR``,
``WANDB_PROJECT``, ``WANDB_API_KEY``, ...): the logger passes only the arguments you give it.

Example:
    >>> from finetune_lib.training import WandbLogger
    >>> tracker = WandbLogger(project="reviews", name="minilm-last2")               # doctest: +SKIP
    >>> tuner = FineTuner(model, output_dir="runs/a", loggers=["jsonl", tracker])   # doctest: +SKIP
    >>> tuner.fit(splits.train, splits.validation)                                 # doctest: +SKIP
    >>> tracker.log_results(tuner.evaluate(splits.test), split="test")              # doctest: +SKIP
    >>> tracker.finish()                                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..events import TrainState
from .distributed import is_main_process
from .tracking import TrackerCallback, figures, require, run_settings, save_model, scalars

__all__ = ["WandbLogger"]

log = logging.getLogger(__name__)


class WandbLogger(TrackerCallback):
    """Logs a run to Weights & Biases: its settings as the run config, every logged record as
    history at its optimizer step (``train/loss``, ``train/lr``, ``validation/<metric>``, ...), the
    PNG figures found in the run folder as images (``plots/<name>``), and the model at the end of
    `fit` as an Artifact of type ``"model"`` (offline mode keeps it for ``wandb sync``).

    The W&B run starts at the first `fit` (``wandb.init``; when you started one yourself with
    ``wandb.init()``, that run is used and left open) and stays open after `fit`, so that
    `log_results` can add the `evaluate()` results to its summary and `log_model` a folder saved
    with `FineTuner.save`; `finish` (or the end of the Python process) closes it. The run id is kept
    in checkpoints: `fit(resume=True)` continues the same W&B run. Under torchrun only rank 0 logs.

    Args:
        project: the W&B project (default: ``WANDB_PROJECT``, else W&B's default).
        name: the run's display name (default: W&B's generated one).
        mode: ``"online"``, ``"offline"`` or ``"disabled"`` (default: ``WANDB_MODE``, else online).
        dir: the folder W&B writes its local files to (default: ``WANDB_DIR``, else the current one).
        log_model: log the model (``save_pretrained`` of the model and tokenizer) at the end of `fit`.
        finish_at_fit_end: close the W&B run at the end of `fit` (what ``loggers=["wandb"]`` does,
            since no one else holds that logger).
        **init_kwargs: more arguments of ``wandb.init`` (``entity``, ``tags``, ``group``, ``notes``, ...).

    Raises:
        ImportError: when wandb is not installed (``pip install 'finetune_lib[wandb]'``).

    Example:
        >>> tuner = FineTuner(model, loggers=[WandbLogger(project="reviews", tags=["baseline"])])  # doctest: +SKIP
    """

    def __init__(self, project: str | None = None, name: str | None = None, mode: str | None = None,
                 dir: str | Path | None = None, log_model: bool = True, *, finish_at_fit_end: bool = False,
                 **init_kwargs: Any):
        self._wandb = require("wandb", "wandb", "WandbLogger")
        if mode is not None and mode not in ("online", "offline", "disabled", "shared"):
            raise ValueError(f"mode must be 'online', 'offline' or 'disabled' (or None for WANDB_MODE), got {mode!r}.")
        self.project, self.name, self.mode = project, name, mode
        self.dir = Path(dir) if dir is not None else None
        self.log_model_at_end = log_model
        self.finish_at_fit_end = finish_at_fit_end
        self.init_kwargs = init_kwargs
        self.run: Any = None  # the wandb Run while one is open
        self._reset_run_state()

    # ---- events ---------------------------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        if not is_main_process(state):
            return
        if self.run is not None and self.run_id is not None and self.run.id != self.run_id:
            self._close()  # a checkpoint of another run was restored: continue that one
        if self.run is None:
            self._start()
        self._output_dir = state.output_dir
        self.step = max(self.step, state.step)
        self.run.config.update(run_settings(state), allow_val_change=True)

    def on_log(self, state: TrainState) -> None:
        if self.run is None or not is_main_process(state):
            return
        self.step = int(state.record.get("step", state.step))
        values = scalars(state.record)
        if values:
            self.run.log(values, step=self.step)

    def on_fit_end(self, state: TrainState) -> None:
        if self.run is None or not is_main_process(state):
            return
        self._log_figures()
        if self.log_model_at_end:
            with tempfile.TemporaryDirectory(prefix="finetune_lib-model-") as folder:
                if save_model(state, Path(folder)):
                    self.log_model(folder, metadata={"step": state.step, **scalars(_last_validation(state))})
        if self.finish_at_fit_end:
            self.finish()

    # ---- after fit ------------------------------------------------------------------------------------
    def log_results(self, results: Mapping[str, Any], split: str = "test") -> None:
        """Put `evaluate()` results in the run's summary as ``<split>/<key>`` (e.g. ``test/accuracy``).

        Example:
            >>> tracker.log_results(tuner.evaluate(splits.test), split="test")   # doctest: +SKIP
        """
        if not is_main_process():
            return
        run = self._open_run("log_results")
        run.summary.update({f"{split}/{k}": v for k, v in scalars(results).items()})

    def log_model(self, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
        """Log a model folder (e.g. what `FineTuner.save` returns) as an Artifact of type ``"model"``.

        Example:
            >>> tracker.log_model(tuner.save("runs/a/final"))   # doctest: +SKIP
        """
        if not is_main_process():
            return
        run = self._open_run("log_model")
        artifact = self._wandb.Artifact(f"model-{run.id}", type="model", metadata=dict(metadata or {}))
        artifact.add_dir(str(path))  # copied to W&B's staging folder now: `path` may go away after this
        run.log_artifact(artifact)

    def finish(self) -> None:
        """Log the figures written to the run folder since `fit` ended (a confusion matrix, say), then
        close the W&B run (a run you started yourself is left open)."""
        if self.run is None or not is_main_process():
            return
        self._log_figures()
        self._close()

    # ---- internals ------------------------------------------------------------------------------------
    def _start(self) -> None:
        wandb = self._wandb
        if wandb.run is not None and self.run_id in (None, wandb.run.id):  # the user's own run: log into it
            self.run, self.run_id, self._owns_run = wandb.run, wandb.run.id, False
            return
        given = {"project": self.project, "name": self.name, "mode": self.mode,
                 "dir": str(self.dir) if self.dir is not None else None}
        kwargs: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        if self.run_id is not None:  # resumed from a checkpoint
            kwargs.update(id=self.run_id, resume="allow")
        kwargs.setdefault("reinit", "create_new")  # several runs in one process, each its own
        self.run = wandb.init(**{**kwargs, **self.init_kwargs})
        self.run_id, self._owns_run = self.run.id, True

    def _open_run(self, what: str) -> Any:
        if self.run is None:
            raise RuntimeError(f"{what}() needs an open W&B run: call it after fit() and before finish().")
        return self.run

    def _log_figures(self) -> None:
        new = self._figures.take(figures(self._output_dir))
        if new:
            images = {f"plots/{p.stem}": self._wandb.Image(str(p)) for p in new}
            self.run.log(images, step=self.step)

    def _close(self) -> None:
        if self._owns_run:
            self.run.finish()
        self.run, self._owns_run = None, False


def _last_validation(state: TrainState) -> dict[str, Any]:
    """The newest validation record of the run (empty when there was none)."""
    for record in reversed(state.history):
        if any(str(k).startswith("validation/") for k in record):
            return record
    return {}
