"""What a hyperparameter search leaves in its `output_dir`: `search.json` (every trial) and
`search.png` (the objective per trial, with the best so far).

The plot needs matplotlib (``pip install 'finetune_lib[plots]'``); without it the search logs a
line and writes only the JSON. Only matplotlib's object-oriented API is used (a `Figure` and the
Agg canvas), so nothing changes in the user's pyplot state.

Example:
    >>> summary = search_summary(study, metric="accuracy")       # doctest: +SKIP
    >>> plot_search(summary, "runs/search/search.png")           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["plot_search", "search_summary", "write_search_outputs"]

log = logging.getLogger(__name__)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def search_summary(study: Any, metric: str) -> dict[str, Any]:
    """A JSON-able summary of an optuna study: the metric, the direction, the best trial (None when no
    trial completed) and every trial's number, state, value, params, intermediate values (step ->
    value, from the evaluations during `fit`), evaluation results, run folder and duration.

    Example:
        >>> search_summary(study, "accuracy")["best"]["params"]   # doctest: +SKIP
        {'learning_rate': 0.00031, 'train_last': 2}
    """
    trials = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete is not None and t.datetime_start is not None else None
        trials.append({"number": t.number, "state": t.state.name, "value": _finite(t.value), "params": t.params,
                       "intermediate_values": {str(k): _finite(v) for k, v in sorted(t.intermediate_values.items())},
                       "results": t.user_attrs.get("results"), "output_dir": t.user_attrs.get("output_dir"),
                       "duration_s": None if duration is None else round(duration, 3)})
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    maximize = study.direction.name == "MAXIMIZE"
    best = (max if maximize else min)(complete, key=lambda t: t["value"]) if complete else None
    return {"study_name": study.study_name, "metric": metric, "direction": "maximize" if maximize else "minimize",
            "best": None if best is None else {k: best[k] for k in ("number", "value", "params")},
            "counts": {state: sum(t["state"] == state for t in trials)
                       for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
            "trials": trials}


def plot_search(summary: dict[str, Any], path: str | Path | None = None, dpi: int = 120) -> Any:
    """The objective of each trial (dots), pruned trials at their last evaluation (crosses) and the
    best value so far (a step line), from `search_summary`.

    Args:
        summary: what `search_summary` returns (or the loaded `search.json`).
        path: where to write the PNG (folders are created); None only returns the figure.
        dpi: resolution of the PNG.

    Returns:
        The matplotlib `Figure`.

    Example:
        >>> plot_search(json.load(open("runs/search/search.json")), "search.png")   # doctest: +SKIP
    """
    from .reporting.plots import require_matplotlib

    require_matplotlib()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    maximize = summary["direction"] == "maximize"
    done = [(t["number"], t["value"]) for t in summary["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
    pruned = [(t["number"], last) for t in summary["trials"] if t["state"] == "PRUNED"
              and (last := _last(t["intermediate_values"])) is not None]
    if done:
        ax.scatter(*zip(*done), color="tab:blue", zorder=3, label="trial")
        best, xs, ys = None, [], []
        for number, value in done:
            best = value if best is None else (max if maximize else min)(best, value)
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:green", linewidth=1.5, label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), color="tab:red", marker="x", zorder=3, label="pruned (last evaluation)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {summary['metric']}")
    ax.set_title(f"hyperparameter search: {summary['metric']} ({summary['direction']})")
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="best")
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(figure)
        figure.savefig(path, dpi=dpi)
    return figure


def _last(values: dict[str, float | None]) -> float | None:
    finite = [v for _, v in sorted(values.items(), key=lambda kv: int(kv[0])) if v is not None]
    return finite[-1] if finite else None


def write_search_outputs(study: Any, metric: str, output_dir: Path, plot: bool = True) -> dict[str, Any]:
    """Write `<output_dir>/search.json` and, with `plot` and matplotlib installed, `search.png`.
    Returns the summary."""
    summary = search_summary(study, metric)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / "search.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(output_dir / "search.json")  # never a half-written file
    if plot:
        try:
            plot_search(summary, output_dir / "search.png")
        except ImportError:
            log.info("search.png skipped: plots need matplotlib (pip install 'finetune_lib[plots]').")
    return summary
