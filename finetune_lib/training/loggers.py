"""Loggers: callbacks that write each logged record somewhere.

* `JSONLLogger` (the default with an ``output_dir``: ``<output_dir>/log.jsonl``), one JSON object a line;
* `CSVLogger`: one row a record, a column per key, for spreadsheets and ``pandas.read_csv``;
* `TensorBoardLogger`: scalars for TensorBoard (``pip install 'finetune_lib[tensorboard]'``);
* `LivePlot`: a loss and metric plot redrawn in Jupyter while training runs
  (``pip install 'finetune_lib[plots]'``);
* `WandbLogger` and `MLflowLogger` (in ``wandb_logger.py`` and ``mlflow_logger.py``): experiment
  trackers (``pip install 'finetune_lib[wandb]'`` / ``'finetune_lib[mlflow]'``).

A record is what `FineTuner` logs (``state.record`` during ``on_log``): ``step``, ``epoch`` and
keys such as ``train/loss``, ``train/lr``, ``validation/loss``, ``validation/<metric>``. The same
records make up ``FineTuner.history``, which a checkpoint stores; on resume, a logger whose file
must not keep records of rolled-back steps is rewritten from that history (``rewrite(history)``).

Example:
    >>> from finetune_lib.training.loggers import CSVLogger, LivePlot, TensorBoardLogger
    >>> tuner = FineTuner(model, callbacks=[CSVLogger("runs/a/log.csv"), TensorBoardLogger("runs/a/tb"),
    ...                                     LivePlot(every=5)])                    # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..events import Callback, TrainState
from .callbacks import JSONLLogger
from .distributed import is_main_process  # rank 0 logs (re-exported: the trackers' rule too)

__all__ = ["CSVLogger", "JSONLLogger", "LOGGERS", "LivePlot", "TensorBoardLogger", "make_loggers"]

log = logging.getLogger(__name__)

FIRST_COLUMNS = ("step", "epoch")

LOGGERS = {"jsonl": "log.jsonl", "csv": "log.csv", "tensorboard": "tensorboard", "live": None, "wandb": None,
           "mlflow": None}
"""Logger names for `make_loggers`, with the file or folder each writes in the run folder (None: none;
the trackers keep their own storage, set by ``WANDB_DIR`` / ``MLFLOW_TRACKING_URI``)."""


def _plain(value: Any) -> Any:
    """A CSV cell: numbers as they are (full precision), other values as JSON."""
    if hasattr(value, "item"):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return "" if value is None else value
    return json.dumps(value, default=str)


def _columns(records: Iterable[Mapping[str, Any]], start: Sequence[str] = ()) -> list[str]:
    """`start`, then every new key in order of first appearance, with step and epoch first."""
    seen = list(dict.fromkeys([*start, *(k for r in records for k in r)]))
    return [c for c in FIRST_COLUMNS if c in seen] + [c for c in seen if c not in FIRST_COLUMNS]


class CSVLogger(Callback):
    """Writes each logged record as a row of a CSV file (wide format: one column per key).

    Training records and evaluation records carry different keys, so a row leaves the keys it lacks
    empty. When a record brings a key the file has no column for yet (the first evaluation, say),
    the file is rewritten with the wider header: written to ``<path>.tmp`` and then renamed over the
    file, so a crash leaves either the old file or the new one, never a half-written one. This
    happens a few times per run (once per new set of keys); otherwise each record is one appended
    line. ``step`` and ``epoch`` are the first columns; the others follow in order of first
    appearance.

    Under torch.distributed, only rank 0 writes. Each `fit` starts the file over from ``tuner.history`` (empty for a new run; the checkpoint's
    records on resume), so the file never holds records of steps a resume rolled back.
    `rewrite(history)` does the same on demand.

    Args:
        path: the CSV file (folders are created).

    Example:
        >>> tuner = FineTuner(model, callbacks=[CSVLogger("runs/a/log.csv")])   # doctest: +SKIP
        >>> import pandas as pd; pd.read_csv("runs/a/log.csv")                    # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] | None = None

    def rewrite(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file with `history` (e.g. `FineTuner.history` after a resume)."""
        self.columns = _columns(history)
        self._write_all(self.columns, [{k: _plain(v) for k, v in r.items()} for r in history])

    def on_fit_start(self, state: TrainState) -> None:
        if is_main_process(state):
            self.rewrite(state.history)

    def on_log(self, state: TrainState) -> None:
        if is_main_process(state):
            self.log(state.record)

    def log(self, record: Mapping[str, Any]) -> None:
        """Add one record (what `on_log` does with ``state.record``)."""
        if self.columns is None:
            self.columns = self._header_on_disk()
        row = {k: _plain(v) for k, v in record.items()}
        if not self.columns or any(k not in self.columns for k in row):
            self.columns = _columns([row], self.columns)
            self._write_all(self.columns, [*self._rows_on_disk(), row])
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    # ---- file helpers -------------------------------------------------------------------------------
    def _header_on_disk(self) -> list[str]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])

    def _rows_on_disk(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def _write_all(self, columns: list[str], rows: list[Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if columns:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp, self.path)


def _require_tensorboard() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch raises this when the tensorboard package is missing
        raise ImportError("TensorBoardLogger needs TensorBoard: pip install 'finetune_lib[tensorboard]' "
                          "(or pip install tensorboard).") from error
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Writes every numeric value of each logged record as a TensorBoard scalar (tag = the key, e.g.
    ``train/loss`` or ``validation/f1``; x = the optimizer step). View with
    ``tensorboard --logdir <log_dir>``.

    Under torch.distributed, only rank 0 writes (as for the other loggers here). On resume, the
    events the interrupted run wrote after the checkpoint's step are hidden
    (``SummaryWriter(purge_step=...)``), so the curves do not fork. The settings of the run are
    written once as text (tag ``settings``).

    Args:
        log_dir: the folder of the event files.
        flush_secs: how often the writer flushes to disk.

    Raises:
        ImportError: when TensorBoard is not installed (``pip install 'finetune_lib[tensorboard]'``).
    """

    def __init__(self, log_dir: str | Path, flush_secs: int = 30):
        self._writer_class = _require_tensorboard()
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self.writer: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        self.close()
        if not is_main_process(state):
            return
        purge = state.step + 1 if state.step > 0 else None
        self.writer = self._writer_class(log_dir=str(self.log_dir), flush_secs=self.flush_secs, purge_step=purge)
        if purge is None:
            table = "\n".join(f"| {k} | {v} |" for k, v in vars(state.args).items())
            self.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table, 0)

    def on_log(self, state: TrainState) -> None:
        if not is_main_process(state):
            return
        if self.writer is None:  # logged outside fit: open a writer that purges nothing
            self.writer = self._writer_class(log_dir=str(self.log_dir), flush_secs=self.flush_secs)
        step = int(state.record.get("step", state.step))
        for key, value in state.record.items():
            if hasattr(value, "item"):
                value = value.item()
            if key in FIRST_COLUMNS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(key, value, step)

    def on_eval_end(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file (done at the end of `fit`)."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (Jupyter Lab/Notebook, VS Code notebooks, Colab), False in a
    terminal (plain Python or the IPython shell)."""
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _ipython_display() -> tuple[Any, Any]:
    """IPython's `display` and `Image`."""
    from IPython.display import Image, display  # type: ignore[import-not-found]

    return display, Image


class LivePlot(Callback):
    """Redraws the loss and validation-metric curves in a Jupyter notebook while training runs.

    Every `every` logged records (and once at the end of `fit`) the figure of
    `finetune_lib.reporting.plot_history` is redrawn in place: the first drawing of a `fit` is shown
    with a display handle (``display(..., display_id=True)``) and later ones update only that output
    (``handle.update(...)``), so the progress bar and anything else the cell printed stay. Outside Jupyter it does nothing
    (it says so once, at the info level); save the curves after training with
    ``plot_history(tuner.history, "curves.png")`` instead.

    Args:
        every: redraw after this many logged records (training and evaluation records both count).
        metrics: validation metrics to show (default all).
        figsize: the figure size in inches.

    Raises:
        ImportError: at the start of `fit` in Jupyter when matplotlib is missing
            (``pip install 'finetune_lib[plots]'``).

    Example:
        >>> tuner = FineTuner(model, callbacks=[LivePlot(every=5)])   # doctest: +SKIP
        >>> tuner.fit(train, validation)                             # doctest: +SKIP
    """

    def __init__(self, every: int = 1, metrics: Sequence[str] | None = None,
                 figsize: tuple[float, float] = (11, 4)):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (records between redraws), got {every!r}.")
        self.every = every
        self.metrics = list(metrics) if metrics is not None else None
        self.figsize = figsize
        self.active: bool | None = None
        self.draws = 0
        self._logs = 0
        self._told = False
        self._handle: Any = None  # the display handle of this fit's figure

    def on_fit_start(self, state: TrainState) -> None:
        self.active = in_notebook() and is_main_process(state)
        if not self.active:
            if not self._told:
                log.info("LivePlot draws only in Jupyter; here it does nothing. Save the curves after training "
                         "with finetune_lib.reporting.plot_history(tuner.history, 'curves.png').")
                self._told = True
            return
        from ..reporting.plots import require_matplotlib

        require_matplotlib()
        self._logs = 0
        self._handle = None  # each fit draws its own figure, below what the cell printed so far

    def on_log(self, state: TrainState) -> None:
        if not self.active:
            return
        self._logs += 1
        if self._logs % self.every == 0:
            self.draw(state.history)

    def on_fit_end(self, state: TrainState) -> None:
        if self.active and self._logs % self.every != 0:
            self.draw(state.history)

    def draw(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Show the current curves (a PNG, whatever the backend) in this fit's output, in place."""
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ..reporting.plots import draw_history

        if not any(_has_number(r) for r in history):
            return
        display, image = _ipython_display()
        figure = Figure(figsize=self.figsize, layout="constrained")
        draw_history(figure, history, self.metrics)
        FigureCanvasAgg(figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        picture = image(data=buffer.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(picture, display_id=True)
        else:
            self._handle.update(picture)
        self.draws += 1


def _has_number(record: Mapping[str, Any]) -> bool:
    return any(k not in FIRST_COLUMNS and isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v) for k, v in record.items())


def make_loggers(loggers: Iterable[str | Callback], output_dir: str | Path | None) -> list[Callback]:
    """Loggers from names (``"jsonl"``, ``"csv"``, ``"tensorboard"``, ``"live"``, ``"wandb"``,
    ``"mlflow"``) or ready objects.

    Named file loggers write into `output_dir` (``log.jsonl``, ``log.csv``, ``tensorboard/``) and are
    left out when it is None; ``"live"`` is a `LivePlot`; ``"wandb"`` and ``"mlflow"`` are a `WandbLogger`
    and an `MLflowLogger` with their defaults (made without an `output_dir` too: a missing package fails
    here); `Callback` objects are kept as they are.

    Example:
        >>> [type(c).__name__ for c in make_loggers(["jsonl", "csv"], "runs/a")]
        ['JSONLLogger', 'CSVLogger']
    """
    built: list[Callback] = []
    for item in loggers:
        if isinstance(item, Callback):
            built.append(item)
            continue
        if item not in LOGGERS:
            raise ValueError(f"Unknown logger {item!r}. Use one of {', '.join(map(repr, LOGGERS))}, or pass a "
                             "Callback object (e.g. CSVLogger('path/log.csv')).")
        if item == "live":
            built.append(LivePlot())
        elif item in ("wandb", "mlflow"):  # with their defaults; pass WandbLogger(...)/MLflowLogger(...) for options
            built.append(_tracker(item))
        elif output_dir is not None:
            target = Path(output_dir) / str(LOGGERS[item])
            built.append({"jsonl": JSONLLogger, "csv": CSVLogger, "tensorboard": TensorBoardLogger}[item](target))
    return built


def _tracker(name: str) -> Callback:
    """The tracker `name` with its defaults."""
    if name == "wandb":
        from .wandb_logger import WandbLogger

        return WandbLogger(finish_at_fit_end=True)  # no one else holds it to finish the run later
    from .mlflow_logger import MLflowLogger

    return MLflowLogger()
