"""Figures of a run: loss and metric curves, and a confusion matrix, as PNG files.

matplotlib is an optional dependency (``pip install 'finetune_lib[plots]'``). It is imported only
when a figure is drawn, and only its object-oriented API is used (``Figure`` with the Agg canvas, no
``pyplot``), so drawing never opens a window, works in threads and headless machines, and leaves
the user's pyplot state and backend alone.

Example:
    >>> from finetune_lib.reporting import plot_history, plot_confusion_matrix
    >>> plot_history(tuner.history, "runs/a/curves.png")                      # doctest: +SKIP
    >>> plot_confusion_matrix([[5, 1], [0, 6]], ["neg", "pos"], "runs/a/cm.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["history_series", "plot_confusion_matrix", "plot_history", "draw_history", "require_matplotlib"]


def require_matplotlib() -> Any:
    """Import matplotlib, or raise an ImportError that says how to install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as error:
        raise ImportError("Plots need matplotlib: pip install 'finetune_lib[plots]' (or pip install matplotlib)."
                          ) from error
    return matplotlib


def _number(value: Any) -> float | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def history_series(history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (steps, values)}`` for every numeric key of `FineTuner.history` records (``step`` and
    ``epoch`` excepted), in the order keys first appear."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in history:
        step = _number(record.get("step"))
        if step is None:
            continue
        for key, value in record.items():
            number = _number(value)
            if key in ("step", "epoch") or number is None:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(number)
    return series


def _validation_metrics(series: Mapping[str, Any], metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        keys = [m if m.startswith("validation/") else f"validation/{m}" for m in metrics]
        return [k for k in keys if k in series]
    return [k for k in series if k.startswith("validation/") and k != "validation/loss"
            and k.count("/") == 1 and not k.endswith(("_low", "_high", "/count"))]


def draw_history(figure: Any, history: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None,
                 title: str | None = None, mark_step: int | None = None) -> Any:
    """Draw the curves of `history` on an (empty) matplotlib `figure`: training and validation loss on
    the left axes, validation metrics on the right ones (omitted when there are none); with
    `mark_step`, a dashed vertical line on each axes at that step (the saved weights). Returns it."""
    series = history_series(history)
    shown = _validation_metrics(series, metrics)
    axes = figure.subplots(1, 2 if shown else 1, squeeze=False)[0]
    loss_ax = axes[0]
    if "train/loss" in series:
        steps, values = series["train/loss"]
        loss_ax.plot(steps, values, label="train loss", color="tab:blue", linewidth=1.5)
    if "validation/loss" in series:
        steps, values = series["validation/loss"]
        loss_ax.plot(steps, values, label="validation loss", color="tab:orange", marker="o", linewidth=1.5)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    loss_ax.grid(True, alpha=0.3)
    if loss_ax.lines:
        loss_ax.legend()
    else:
        loss_ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=loss_ax.transAxes)
    if shown:
        metric_ax = axes[1]
        for key in shown:
            steps, values = series[key]
            metric_ax.plot(steps, values, marker="o", linewidth=1.5, label=key.split("/", 1)[1])
        metric_ax.set_xlabel("step")
        metric_ax.set_ylabel("value")
        metric_ax.set_title("validation metrics")
        metric_ax.set_ylim(*_metric_limits([v for key in shown for v in series[key][1]]))
        metric_ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        metric_ax.grid(True, alpha=0.3)
        metric_ax.legend()
    if mark_step is not None and series:
        for ax in axes:
            ax.axvline(mark_step, color="tab:green", linestyle="--", linewidth=1.2,
                       label=f"saved weights (step {mark_step})")
            ax.legend()
    if title:
        figure.suptitle(title)
    return figure


def _metric_limits(values: Sequence[float], min_span: float = 0.1) -> tuple[float, float]:
    """y-limits spanning at least `min_span` (so a flat 0.9835 is not drawn as a 1e-4-wide band), kept
    inside [0, 1] when every value is a fraction (accuracy, F1, ...)."""
    finite = [float(v) for v in values if v == v and abs(v) != float("inf")] or [0.0]
    lo, hi = min(finite), max(finite)
    pad = max((min_span - (hi - lo)) / 2, (hi - lo) * 0.05)
    lo, hi = lo - pad, hi + pad
    if 0.0 <= min(finite) and max(finite) <= 1.0:
        lo, hi = max(0.0, lo), min(1.0, hi)
        if hi - lo < min_span:  # pressed against 0 or 1: extend the other way
            lo, hi = (max(0.0, hi - min_span), hi) if hi >= 1.0 else (lo, min(1.0, lo + min_span))
    return lo, hi


def _save(figure: Any, path: str | Path | None, dpi: int) -> None:
    if path is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi)


def plot_history(history: Any, path: str | Path | None = None, metrics: Sequence[str] | None = None,
                 title: str | None = None, dpi: int = 120, mark_step: int | None = None) -> Any:
    """Loss and validation-metric curves of a run, from `FineTuner.history`.

    Args:
        history: the records of `FineTuner.history` (keys ``"step"``, ``"train/loss"``,
            ``"validation/loss"``, ``"validation/<metric>"``; other keys are ignored); or a `RunInfo`
            or the `FineTuner` itself, whose saved-weights step is then marked (see `mark_step`).
        path: where to write the PNG (folders are created); None only returns the figure.
        metrics: validation metrics to show (names with or without ``"validation/"``); default all.
        title: a title over both axes.
        dpi: resolution of the PNG.
        mark_step: draw a dashed line at this step, labelled "saved weights": the step the final
            weights come from (the best evaluation's when early stopping restored it). Default: that
            step when `history` is a `RunInfo` or a `FineTuner`, else no line.

    Returns:
        The matplotlib `Figure` (show it in Jupyter by leaving it as a cell's last value).

    Example:
        >>> plot_history(tuner, "runs/a/curves.png")  # marks the step of the saved weights  # doctest: +SKIP
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    if not isinstance(history, Sequence):  # a RunInfo or a FineTuner
        from .tuner_info import as_run_info

        run = as_run_info(history)
        history = run.history
        mark_step = run.weights_step if mark_step is None else mark_step
    series = history_series(history)
    wide = bool(_validation_metrics(series, metrics))
    figure = Figure(figsize=(11 if wide else 6, 4), layout="constrained")
    draw_history(figure, history, metrics, title, mark_step)
    _save(figure, path, dpi)
    return figure


def plot_confusion_matrix(matrix: Any, labels: Sequence[Any] | None = None, path: str | Path | None = None,
                          normalize: bool = False, title: str = "confusion matrix", dpi: int = 120) -> Any:
    """A confusion matrix as a heat map with the counts written in the cells.

    Args:
        matrix: ``matrix[i][j]`` counts examples of true class ``i`` predicted as ``j`` (what
            `ConfusionMatrix().compute()` returns; a nested list, NumPy array or tensor). When there
            are more `labels` than rows (classes never seen grow no row), it is padded with zeros.
        labels: class names in id order (e.g. `tuner.preprocessor.label_names`); default the ids.
        path: where to write the PNG; None only returns the figure.
        normalize: colour and annotate each row as fractions of its true class (recall per class).
        title: the axes title.
        dpi: resolution of the PNG.
    """
    require_matplotlib()
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix.tolist() if hasattr(matrix, "tolist") else matrix, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix must be square (true class x predicted class), got shape {counts.shape}")
    k = max(counts.shape[0], len(labels) if labels is not None else 0)
    if k > counts.shape[0]:
        counts = np.pad(counts, ((0, k - counts.shape[0]), (0, k - counts.shape[0])))
    names = [str(n) for n in labels] if labels is not None else [str(i) for i in range(k)]
    if len(names) < k:
        names += [str(i) for i in range(len(names), k)]
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    side = max(4.0, 0.55 * k + 2.5)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, float(shown.max())))
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    rotate = max(map(len, names), default=0) > 4
    ax.set_xticks(range(k), names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + (" (row-normalized)" if normalize else ""))
    threshold = (1 if normalize else max(1.0, float(shown.max()))) / 2
    if k <= 30:
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if shown[i, j] > threshold else "black")
    _save(figure, path, dpi)
    return figure
