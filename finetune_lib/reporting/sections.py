"""Sections shared by the training report and the model card: results with intervals, validation
metrics per evaluation, data summary, freezing, settings and versions.

Each ``add_*`` function appends blocks to a :class:`~finetune_lib.reporting.document.Document` and
reads only plain attributes of the `FineTuner` (``args``, ``history``, ``preprocessor``, ``freezer``,
``regularizers``, ``metrics``), so a report can also be written for a tuner that was never fitted.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .document import Document

if TYPE_CHECKING:  # pragma: no cover
    from ..training.finetuner import FineTuner

__all__ = [
    "add_data", "add_freezing", "add_results", "add_settings", "add_validation", "add_versions", "fmt",
    "metric_signatures", "model_name", "short_repr", "split_results", "training_summary", "validation_table",
    "versions",
]

INTERVAL_SUFFIXES = ("_low", "_high")


def fmt(value: Any) -> str:
    """A number for a table: floats with 4 decimals (1 above 1000), ints as they are."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def model_name(tuner: FineTuner) -> str:
    """The base model as a short name: the hub id, a local folder's name, or the model's class."""
    source = tuner.model_source
    if isinstance(source, (str, Path)):
        path = Path(source)
        return path.name if path.exists() else str(source)
    return type(source).__name__


def short_repr(obj: Any, limit: int = 160) -> str:
    """`repr(obj)`, cut at `limit` characters."""
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 4] + " ...)"


def training_summary(tuner: FineTuner) -> str:
    """Steps and epochs trained; early stopping and restored weights, when they happened."""
    history = tuner.history
    steps = max((r.get("step", 0) for r in history), default=0)
    epochs = max((r.get("epoch", 0) for r in history), default=0)
    line = f"{steps} optimizer steps ({epochs:g} epochs)" if history else "not trained in this session"
    for reg in tuner.regularizers:
        stopped, best = getattr(reg, "stopped_step", None), getattr(reg, "best_step", None)
        if stopped is not None:
            line += f"; early stopping ended training at step {stopped}"
        if getattr(reg, "restore_best", False) and best is not None and best != steps:
            line += f"; the weights of step {best} (best `{getattr(reg, 'monitor', '?')}`) were restored"
    return line


# ---- results ---------------------------------------------------------------------------------------
def split_results(results: Mapping[str, Any]) -> tuple[dict[str, tuple[float, float | None, float | None]],
                                                       dict[str, dict[str, Any]]]:
    """Split a flat `evaluate()` dict into overall ``{metric: (value, low, high)}`` and per-slice
    ``{slice: {"count": n, metric: (value, low, high)}}``."""
    def interval(key: str) -> tuple[float | None, float | None]:
        return results.get(key + "_low"), results.get(key + "_high")

    overall: dict[str, tuple[float, float | None, float | None]] = {}
    slices: dict[str, dict[str, Any]] = {}
    for key, value in results.items():
        if key.endswith(INTERVAL_SUFFIXES) and key.rsplit("_", 1)[0] in results:
            continue
        if "/" in key:
            name, metric = key.rsplit("/", 1)
            entry = slices.setdefault(name, {})
            entry[metric] = value if metric == "count" else (value, *interval(key))
        else:
            overall[key] = (value, *interval(key))
    return overall, slices


def _with_interval(value: float, low: float | None, high: float | None) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return fmt(value)
    return f"{fmt(value)} ({fmt(low)} – {fmt(high)})"


def add_results(doc: Document, results: Mapping[str, Any], confidence: float | None = None) -> None:
    """A table of metric, value and interval (and a note when generation ran out of time); then one row
    per slice, when there are slices."""
    overall, slices = split_results(results)
    has_intervals = any(low is not None for _, low, _ in overall.values())
    level = f"{confidence:.0%} interval" if confidence else "interval"
    header = ["metric", "value"] + ([f"{level} (low – high)"] if has_intervals else [])
    rows = []
    for name, (value, low, high) in overall.items():
        row = [name, fmt(value)]
        if has_intervals:
            row.append(f"{fmt(low)} – {fmt(high)}" if low is not None and high is not None else "")
        rows.append(row)
    doc.table(header, rows)
    generated = overall.get("generated_fraction", (1.0,))[0]
    if isinstance(generated, (int, float)) and generated < 1:
        doc.paragraph(f"**Incomplete generation**: the generation time budget ran out after {generated:.0%} of the "
                      "prompts; the text metrics scored the other prompts as empty outputs (`generated_fraction`).")
    if has_intervals:
        doc.paragraph(f"Intervals: {'a ' + format(confidence, '.0%') if confidence else 'a'} percentile "
                      "bootstrap over the examples of the evaluation set (`MetricSuite`, seeded).")
    if slices:
        metrics = list(dict.fromkeys(m for entry in slices.values() for m in entry if m != "count"))
        doc.paragraph("Per slice" + (" (value and interval):" if has_intervals else ":"))
        doc.table(["slice", "count", *metrics],
                  [[name, entry.get("count", ""), *(_with_interval(*entry[m]) if m in entry else "" for m in metrics)]
                   for name, entry in slices.items()])


# ---- validation during training ----------------------------------------------------------------------
def validation_table(history: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per evaluation during `fit`: step, epoch, the latest training loss, validation metrics."""
    evals = [r for r in history if any(str(k).startswith("validation/") for k in r)]
    keys = list(dict.fromkeys(k for r in evals for k in r if str(k).startswith("validation/")
                              and not str(k).endswith(INTERVAL_SUFFIXES)))
    header = ["step", "epoch", "train loss",
              *("validation loss" if k == "validation/loss" else k.split("/", 1)[1] for k in keys)]
    rows = []
    for record in evals:
        train = [r["train/loss"] for r in history if "train/loss" in r and r.get("step", 0) <= record.get("step", 0)]
        epoch = record.get("epoch", "")
        rows.append([str(record.get("step", "")), f"{epoch:g}" if isinstance(epoch, (int, float)) else str(epoch),
                     fmt(train[-1]) if train else "", *(fmt(record[k]) if k in record else "" for k in keys)])
    return header, rows


def add_validation(doc: Document, history: Sequence[Mapping[str, Any]]) -> bool:
    """The validation table; False (and nothing added) when the history holds no evaluation."""
    header, rows = validation_table(history)
    if not rows:
        return False
    doc.table(header, rows)
    return True


# ---- data ----------------------------------------------------------------------------------------------
def _as_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if isinstance(report, Mapping):
        return dict(report)
    return None


def _balance(labels: Mapping[Any, int], size: int, shown: int = 8) -> str:
    if not labels:
        return "-"
    items = [f"{k}: {v} ({v / max(size, 1):.0%})" for k, v in list(labels.items())[:shown]]
    more = len(labels) - shown
    return ", ".join(items) + (f", +{more} more" if more > 0 else "")


def add_data(doc: Document, tuner: FineTuner, data_report: Any = None) -> None:
    """Sizes and label balance per split from a `DataReport` (or its `to_dict()`, or a string);
    without one, what the Preprocessor saw (`tuner.preprocessor.stats`) and the label names."""
    pre = tuner.preprocessor
    report = _as_dict(data_report)
    if report is None and data_report is not None:  # e.g. str(report)
        doc.code(str(data_report))
    elif report is not None:
        splits = report.get("splits", [])
        has_tokens = any(s.get("tokens") for s in splits)
        max_length = report.get("max_length")
        header = ["split", "examples", "label balance"] + (["tokens median / p95 / max"] if has_tokens else [])
        header += [f"> {max_length} tokens"] if max_length is not None else []
        rows = []
        for s in splits:
            row = [s.get("name", ""), s.get("size", ""), _balance(s.get("labels") or {}, s.get("size") or 0)]
            if has_tokens:
                t = s.get("tokens") or {}
                row.append(" / ".join(f"{t[k]:g}" for k in ("median", "p95", "max")) if t else "-")
            if max_length is not None:
                row.append("-" if s.get("truncated") is None else str(s["truncated"]))
            rows.append(row)
        doc.table(header, rows)
        notes = []
        if report.get("dropped"):
            notes.append("dropped while loading: " + ", ".join(f"{k} {v}" for k, v in report["dropped"].items()))
        if any((report.get("dedup") or {}).values()):
            notes.append("deduplication: " + ", ".join(f"{k} {v}" for k, v in report["dedup"].items()))
        if report.get("leakage") is not None:
            leaks = {k: v.get("exact", 0) + v.get("normalized", 0) + v.get("near", 0)
                     for k, v in report["leakage"].items()}
            notes.append("leakage between splits: " + (", ".join(f"{k} {v}" for k, v in leaks.items()) or "none"))
        notes += [f"**warning**: {w}" for w in report.get("warnings", [])]
        doc.bullets(notes)
    else:
        stats = {k: v for k, v in getattr(pre, "stats", {}).items() if k != "predict"}
        if stats:
            doc.table(["split", "examples", "truncated to max_length"],
                      [[name, s.examples, s.truncated] for name, s in stats.items()])
        else:
            doc.paragraph("No data summary was recorded.")
    details = []
    if pre.label_names:
        details.append("labels (id order): " + ", ".join(f"`{n}`" for n in pre.label_names))
    steps = [s if isinstance(s, str) else getattr(s, "__name__", type(s).__name__) for s in pre.clean_steps]
    details.append("cleaning: " + (", ".join(f"`{s}`" for s in steps) if steps else "none"))
    if pre.max_length is not None:
        details.append(f"max_length: {pre.max_length} tokens")
    doc.bullets(details)


# ---- freezing, settings, versions ------------------------------------------------------------------------
def _freeze_summary(tuner: FineTuner, summary: Any) -> Any:
    if summary is not None or tuner.freezer is None or not hasattr(tuner.freezer, "summary"):
        return summary
    try:
        return tuner.freezer.summary()
    except Exception:  # not applied yet (the tuner was never fitted)
        return None


def add_freezing(doc: Document, tuner: FineTuner, summary: Any = None) -> None:
    """The LayerFreezer's settings and its table of trainable and frozen parameters per part."""
    summary = _freeze_summary(tuner, summary)
    if tuner.freezer is None:
        text = "No layer freezing: every parameter was trained."
        if tuner.model is not None:
            total = sum(p.numel() for p in tuner.model.parameters())
            trainable = sum(p.numel() for p in tuner.model.parameters() if p.requires_grad)
            text += f" ({trainable:,} of {total:,} parameters trainable.)"
        doc.paragraph(text)
    else:
        doc.paragraph(f"`{tuner.freezer!r}`")
    if summary is None:
        return
    if isinstance(summary, str):
        doc.code(summary)
        return
    doc.table(["part", "module", "trainable", "frozen", "lr scale", "status"],
              [[r.part, f"`{r.module}`" if r.module else "", f"{r.trainable:,}", f"{r.frozen:,}",
                "-" if r.lr_scale is None else f"{r.lr_scale:.4g}", r.status] for r in summary.rows])
    share = 100.0 * summary.trainable / summary.total if summary.total else 0.0
    doc.bullets([f"trainable: {summary.trainable:,} of {summary.total:,} parameters ({share:.1f}%)",
                 *summary.notes])


def add_settings(doc: Document, tuner: FineTuner) -> None:
    """The `TrainingArgs` as a table, then precision, regularizers and metrics (with their signatures)."""
    doc.table(["setting", "value"], [[k, f"`{v!r}`" if isinstance(v, str) else v] for k, v in vars(tuner.args).items()])
    extra = []
    precision = getattr(tuner.precision, "name", None) or getattr(tuner.precision, "dtype", None)
    if precision is not None:
        extra.append(f"precision used: `{precision}`")
    extra.append("regularizers: " + (", ".join(f"`{short_repr(r)}`" for r in tuner.regularizers) or "none"))
    if tuner.metrics is not None:
        signatures = metric_signatures(tuner)
        extra.append("metrics: " + ", ".join(
            f"`{n}`" + (f" (signature `{signatures[n]}`)" if n in signatures else "")
            for n in getattr(tuner.metrics, "names", [])))
    doc.bullets(extra)


def metric_signatures(tuner: FineTuner) -> dict[str, str]:
    """``{metric name: signature}`` of the last evaluation (sacrebleu's, for BLEU and chrF): from
    ``tuner.last_artifacts`` after `evaluate()`, else the suite's own after a validation in `fit`."""
    artifacts = getattr(tuner, "last_artifacts", None) or getattr(tuner.metrics, "last_artifacts", None) or {}
    suffix = "_signature"
    return {key[: -len(suffix)]: value for key, value in artifacts.items()
            if isinstance(key, str) and key.endswith(suffix) and isinstance(value, str)}


def versions() -> dict[str, str]:
    """Versions of finetune_lib, transformers, torch, tokenizers and Python."""
    from .. import __version__

    out = {"finetune_lib": __version__}
    for package in ("transformers", "torch", "tokenizers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    out["python"] = platform.python_version()
    return out


def add_versions(doc: Document) -> None:
    doc.bullets([f"{k} {v}" for k, v in versions().items()])
