"""The training report of a run: one Markdown (or self-contained HTML) page with the evaluation
results and their confidence intervals, the validation metrics of each evaluation during training,
the figures, the data summary, the layer freezing and the settings.

It reads a `RunInfo` (see `finetune_lib.reporting.run_info`); a `FineTuner` passed instead is
converted with `finetune_lib.reporting.tuner_info.run_info_from_tuner`. No path of the training machine
is written: a local base model shows as its folder name, an absolute run folder as its name.

Example:
    >>> results = tuner.evaluate(splits.test, confidence=0.95)                     # doctest: +SKIP
    >>> plot_history(tuner.history, "runs/a/curves.png")                           # doctest: +SKIP
    >>> write_report(tuner, results, "runs/a/report.md", data_report=splits.report(),
    ...              figures={"Loss and metrics": "runs/a/curves.png"}, confidence=0.95)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .document import Document
from .run_info import split_baseline
from .sections import (
    add_data,
    add_freezing,
    add_results,
    add_settings,
    add_validation,
    add_versions,
    freezing_heading,
    training_summary,
)
from .tuner_info import as_run_info

__all__ = ["build_report", "write_report"]

Figures = Mapping[str, "str | Path"] | Sequence["str | Path"] | None


def _figures(figures: Figures) -> list[tuple[str, Path]]:
    if figures is None:
        return []
    if isinstance(figures, Mapping):
        return [(str(caption), Path(p)) for caption, p in figures.items()]
    if isinstance(figures, (str, Path)):
        figures = [figures]
    return [(Path(p).stem.replace("_", " "), Path(p)) for p in figures]


def build_report(run: Any, results: Mapping[str, Any] | None, base: Path | None = None, *,
                 data_report: Any = None, freeze_summary: Any = None, figures: Figures = None,
                 confidence: float | None = None, split: str = "test", title: str | None = None) -> Document:
    """The report as a :class:`Document` (see `write_report` for the arguments); `base` is the folder
    that image links are relative to."""
    from .. import __version__

    run = as_run_info(run)
    doc = Document()
    doc.heading(title or f"Training report: {run.base_model}", 1)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.bullets([
        f"base model: `{run.base_model}`",
        f"task: `{run.task}`",
        f"training: {training_summary(run)}",
        *([f"max_length used in training: {run.max_length} tokens"] if run.max_length else []),
        *([f"prompt format: {run.prompt_format}"] if run.prompt_format else []),
        f"written {when} by finetune_lib {__version__}",
        *([f"run folder: `{run.run_folder}`"] if run.run_folder is not None else []),
    ])
    if results:
        doc.heading(f"Results on the {split} split", 2)
        tuned, base = split_baseline(results)
        if base:
            doc.paragraph("The base model before fine-tuning and the fine-tuned model, with the same metrics and "
                          "generation settings:")
        add_results(doc, tuned or {}, confidence, base)
    shown = [(caption, path) for caption, path in _figures(figures) if path.is_file()]
    if shown:
        doc.heading("Figures", 2)
        for caption, path in shown:
            doc.paragraph(f"**{caption}**")
            doc.image(path, caption, base)
    doc.heading("Validation during training", 2)
    if not add_validation(doc, run.history, run.weights_step):
        doc.paragraph("No evaluation ran during training (pass validation data to `fit()`).")
    doc.heading("Data", 2)
    add_data(doc, run, data_report)
    doc.heading(freezing_heading(run), 2)
    add_freezing(doc, run, freeze_summary)
    doc.heading("Settings", 2)
    add_settings(doc, run)
    doc.heading("Environment", 2)
    add_versions(doc)
    return doc


def write_report(run: Any, results: Mapping[str, Any] | None, path: str | Path, data_report: Any = None,
                 freeze_summary: Any = None, figures: Figures = None, *, confidence: float | None = None,
                 split: str = "test", title: str | None = None) -> Path:
    """Write the training report of a run to `path`: Markdown, or HTML when `path` ends in .html.

    Args:
        run: a `RunInfo`, or the `FineTuner` (converted with
            `finetune_lib.reporting.tuner_info.run_info_from_tuner`).
        results: what `tuner.evaluate(...)` returned (``"<metric>_low"`` / ``"<metric>_high"`` keys
            become the interval column, ``"<slice>/<metric>"`` keys a per-slice table, and the
            ``"baseline/<key>"`` keys of ``evaluate(..., baseline=True)`` a base-vs-fine-tuned table);
            None to leave the results out.
        path: the file to write (folders are created).
        data_report: a `DataReport` (``splits.report()``), its ``to_dict()`` or a string; default
            ``run.data_summary`` when set, else what the Preprocessor counted.
        freeze_summary: a `FreezeSummary` or a string; default ``run.freeze_summary``.
        figures: image files to show, as ``{caption: path}`` or a list of paths. Markdown links them
            relative to the report's folder; HTML embeds them, so the page stands alone.
        confidence: the level the intervals were computed at (e.g. 0.95), for the column title.
        split: the name of the evaluated split, for the section title.
        title: the page title.

    Returns:
        The path written.
    """
    run = as_run_info(run)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = build_report(run, results, path.parent, data_report=data_report, freeze_summary=freeze_summary,
                       figures=figures, confidence=confidence, split=split, title=title)
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(doc.html(title or f"Training report: {run.base_model}"), encoding="utf-8")
    else:
        path.write_text(doc.markdown(), encoding="utf-8")
    return path
