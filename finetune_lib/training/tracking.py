"""What the experiment trackers (`WandbLogger`, `MLflowLogger`) share: importing the optional
library with an error that names the extra, the run's settings as flat parameters, the numbers of a
record, the PNG figures of a run folder, and the model written to a folder for upload.

Each function takes the narrow inputs it needs (a record, a `TrainState`, a folder).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..events import Callback, TrainState

log = logging.getLogger(__name__)

#: record keys that are the x axis, not values
AXES = ("step", "epoch")
#: folders of a run that hold no figures of the run (checkpoints, trackers' own local stores)
SKIPPED_FOLDERS = frozenset({"checkpoints", "wandb", "mlruns", "mlartifacts", "tensorboard"})


class TrackerCallback(Callback):
    """What both trackers keep in a checkpoint: the id of their run, so that `fit(resume=True)`
    continues the same run."""

    run_id: str | None = None

    def _reset_run_state(self) -> None:
        """What a tracker knows of its run before the first `fit`."""
        self.run_id: str | None = None  # kept in checkpoints, to continue the same run on resume
        self.step = 0  # the last optimizer step logged
        self._owns_run = False
        self._output_dir: Path | None = None
        self._figures = NewFigures()

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id


def require(module: str, extra: str, user: str) -> Any:
    """Import `module`, or raise an ImportError that says which extra installs it.

    Example:
        >>> require("json", "none", "Example").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{user} needs {module}: pip install 'finetune_lib[{extra}]' (or pip install {module})."
                          ) from error


def number(value: Any) -> float | int | None:
    """A plain int or float, or None for anything else (bools, strings, None)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def scalars(record: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric values of a record (``train/loss``, ``validation/f1``, ...), without ``step``/``epoch``.

    Example:
        >>> scalars({"step": 3, "epoch": 0.5, "train/loss": 0.7, "note": "x"})
        {'train/loss': 0.7}
    """
    out: dict[str, float | int] = {}
    for key, value in record.items():
        value = number(value)
        if key not in AXES and value is not None:
            out[str(key)] = value
    return out


def run_settings(state: TrainState) -> dict[str, Any]:
    """The run's settings as flat plain values: the model's name, the task, every `TrainingArgs`
    field (callables as their qualified names) and ``total_steps``."""
    from ..reporting.run_info import plain_value

    settings: dict[str, Any] = {}
    name = getattr(getattr(state.model, "config", None), "name_or_path", None)
    if name:
        settings["model"] = str(name)
    if state.task is not None:
        settings["task"] = getattr(state.task, "name", str(state.task))
    args = vars(state.args) if state.args is not None and hasattr(state.args, "__dict__") else {}
    for key, value in args.items():
        value = plain_value(value)
        settings[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    if state.max_steps:
        settings["total_steps"] = state.max_steps  # what epochs or max_steps came to
    return settings


def figures(output_dir: Path | None) -> list[Path]:
    """The PNG files of a run folder (e.g. ``curves.png`` and ``confusion_matrix.png`` written with
    `finetune_lib.reporting`), oldest first; checkpoints and trackers' own folders are skipped."""
    if output_dir is None or not Path(output_dir).is_dir():
        return []
    root = Path(output_dir)
    found = [p for p in root.rglob("*.png")
             if p.is_file() and not SKIPPED_FOLDERS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))


class NewFigures:
    """Remembers which figures were handed to a tracker (by path and modification time), so a figure
    is logged again only when it was rewritten."""

    def __init__(self) -> None:
        self.seen: dict[Path, float] = {}

    def take(self, paths: Iterable[Path]) -> list[Path]:
        """The paths not seen yet in their current version, now marked seen."""
        new = []
        for path in paths:
            mtime = path.stat().st_mtime
            if self.seen.get(path) != mtime:
                self.seen[path] = mtime
                new.append(path)
        return new


def save_model(state: TrainState, folder: Path) -> bool:
    """Write ``state.model`` (and ``state.tokenizer``) to `folder` with ``save_pretrained``, for
    upload as an artifact. Returns False, with a warning, when that is not possible here."""
    model = state.model
    if not hasattr(model, "save_pretrained"):
        log.warning("the model has no save_pretrained(); no model artifact is logged. Log a saved folder "
                    "with logger.log_model(tuner.save(path)).")
        return False
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):  # FSDP shards: gathering needs every rank
        log.warning("the model is sharded (FSDP); no model artifact is logged at the end of fit. Log the saved "
                    "folder with logger.log_model(tuner.save(path)) instead.")
        return False
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if state.tokenizer is not None and hasattr(state.tokenizer, "save_pretrained"):
        state.tokenizer.save_pretrained(folder)
    return True


def log_evaluation(trackers: Iterable[Any], results: Mapping[str, Any], split: str = "eval") -> None:
    """`evaluate()`'s results to each tracker of the last `fit` that still has a run open (a W&B run
    made from the name ``"wandb"`` closes at the end of `fit`; pass a `WandbLogger` to keep it)."""
    for tracker in trackers:
        if getattr(tracker, "run", True) is None:  # its run is closed
            continue
        try:
            tracker.log_results(results, split=split)
        except RuntimeError as error:  # no run to write to: the results are still returned to the caller
            log.info("%s: evaluation results not logged (%s)", type(tracker).__name__, error)
