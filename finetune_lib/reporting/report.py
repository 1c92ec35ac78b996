"""The training report of a run: one Markdown (or self-contained HTML) page with the evaluation
results and their confidence intervals, the validation metrics of each evaluation during training,
the figures, the data summary, the layer freezing and the settings.

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
from typing import TYPE_CHECKING, Any

from .document import Document
from .sections import (
    add_data,
    add_freezing,
    add_results,
    add_settings,
    add_validation,
    add_versions,
    model_name,
    training_summary,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..training.finetuner import FineTuner

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


def build_report(tuner: FineTuner, results: Mapping[str, Any] | None, base: Path | None = None, *,
                 data_report: Any = None, freeze_summary: Any = None, figures: Figures = None,
                 confidence: float | None = None, split: str = "test", title: str | None = None) -> Document:
    """The report as a :class:`Document` (see `write_report` for the arguments); `base` is the folder
    that image links are relative to."""
    from .. import __version__

    doc = Document()
    doc.heading(title or f"Training report: {model_name(tuner)}", 1)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.bullets([
        f"base model: `{tuner.model_source if isinstance(tuner.model_source, (str, Path)) else model_name(tuner)}`",
        f"task: `{tuner.task.name}`",
        f"training: {training_summary(tuner)}",
        f"written {when} by finetune_lib {__version__}",
        *([f"run folder: `{tuner.output_dir}`"] if tuner.output_dir is not None else []),
    ])
    if results:
        doc.heading(f"Results on the {split} split", 2)
        add_results(doc, results, confidence)
    shown = [(caption, path) for caption, path in _figures(figures) if path.is_file()]
    if shown:
        doc.heading("Figures", 2)
        for caption, path in shown:
            doc.paragraph(f"**{caption}**")
            doc.image(path, caption, base)
    doc.heading("Validation during training", 2)
    if not add_validation(doc, tuner.history):
        doc.paragraph("No evaluation ran during training (pass validation data to `fit()`).")
    doc.heading("Data", 2)
    add_data(doc, tuner, data_report if data_report is not None else getattr(tuner, "data_summary", None))
    doc.heading("Layer freezing", 2)
    add_freezing(doc, tuner, freeze_summary)
    doc.heading("Settings", 2)
    add_settings(doc, tuner)
    doc.heading("Environment", 2)
    add_versions(doc)
    return doc


def write_report(tuner: FineTuner, results: Mapping[str, Any] | None, path: str | Path, data_report: Any = None,
                 freeze_summary: Any = None, figures: Figures = None, *, confidence: float | None = None,
                 split: str = "test", title: str | None = None) -> Path:
    """Write the training report of `tuner` to `path`: Markdown, or HTML when `path` ends in .html.

    Args:
        tuner: the `FineTuner` (its history, settings, preprocessor, freezer, regularizers).
        results: what `tuner.evaluate(...)` returned (``"<metric>_low"`` / ``"<metric>_high"`` keys
            become the interval column, ``"<slice>/<metric>"`` keys a per-slice table); None to leave
            the results out.
        path: the file to write (folders are created).
        data_report: a `DataReport` (``splits.report()``), its ``to_dict()`` or a string; default
            ``tuner.data_summary`` when set, else what the Preprocessor counted.
        freeze_summary: a `FreezeSummary` or a string; default ``tuner.freezer.summary()``.
        figures: image files to show, as ``{caption: path}`` or a list of paths. Markdown links them
            relative to the report's folder; HTML embeds them, so the page stands alone.
        confidence: the level the intervals were computed at (e.g. 0.95), for the column title.
        split: the name of the evaluated split, for the section title.
        title: the page title.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = build_report(tuner, results, path.parent, data_report=data_report, freeze_summary=freeze_summary,
                       figures=figures, confidence=confidence, split=split, title=title)
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(doc.html(title or f"Training report: {model_name(tuner)}"), encoding="utf-8")
    else:
        path.write_text(doc.markdown(), encoding="utf-8")
    return path
