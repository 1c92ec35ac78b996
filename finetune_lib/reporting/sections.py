"""Sections shared by the training report and the model card: results with intervals, validation
metrics per evaluation, data summary, freezing, settings and versions.

Each ``add_*`` function appends blocks to a :class:`~finetune_lib.reporting.document.Document` and
reads only a :class:`~finetune_lib.reporting.run_info.RunInfo` (plain data about the run), so a
report can also be written for a tuner that was never fitted, or for a run described by hand.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from .document import Document
from .run_info import RunInfo, split_baseline

__all__ = [
    "adapter_sentence", "add_comparison", "freezing_heading", "add_data", "add_freezing", "add_results", "add_settings", "add_validation", "add_versions", "fmt",
    "split_results", "training_summary", "validation_table", "versions",
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


def training_summary(run: RunInfo) -> str:
    """Steps and epochs trained; whether early stopping ended training, and which step the final
    weights come from."""
    if not run.steps:
        return "not trained in this session"
    line = f"{run.steps} optimizer steps ({run.epochs:g} epochs)"
    monitor = f" (best `{run.early_stopping_monitor}`)" if run.early_stopping_monitor else ""
    if run.stopped_early_at is not None:
        line += f"; early stopping ended training at step {run.stopped_early_at}"
    elif run.early_stopping_monitor:
        line += "; early stopping did not end training (it ran to its planned end)"
    if run.weights_step is not None and run.weights_step != run.steps:
        line += f"; the saved weights are those of step {run.weights_step}{monitor}, restored at the end"
    elif run.weights_step is not None:
        line += f"; the saved weights are those of the last step ({run.weights_step})"
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


def _generation_note(doc: Document, overall: Mapping[str, Any], whose: str = "") -> None:
    generated = overall.get("generated_fraction", (1.0,))[0]
    if isinstance(generated, (int, float)) and generated < 1:
        doc.paragraph(f"**Incomplete generation**{whose}: the generation time budget ran out after {generated:.0%} of "
                      "the prompts; the text metrics scored the other prompts as empty outputs (`generated_fraction`).")


def _change(tuned: Any, base: Any) -> str:
    if isinstance(tuned, bool) or isinstance(base, bool) or not all(isinstance(v, (int, float)) for v in (tuned, base)):
        return ""
    diff = float(tuned) - float(base)
    return ("+" if diff > 0 else "") + fmt(diff) if math.isfinite(diff) else ""


def add_comparison(doc: Document, results: Mapping[str, Any], baseline: Mapping[str, Any],
                   confidence: float | None = None) -> None:
    """Base model and fine-tuned model side by side: one row per metric (loss, BLEU, chrF, perplexity,
    custom metrics, ...) with both values (and intervals) and the change; then the slices of each."""
    overall, slices = split_results(results)
    base_overall, base_slices = split_results(baseline)
    names = list(dict.fromkeys([*overall, *base_overall]))
    has_intervals = any(low is not None for _, low, _ in [*overall.values(), *base_overall.values()])
    rows = []
    for name in names:
        tuned, base = overall.get(name), base_overall.get(name)
        rows.append([name, _with_interval(*base) if base else "", _with_interval(*tuned) if tuned else "",
                     _change(tuned[0], base[0]) if tuned and base else ""])
    doc.table(["metric", "base model", "fine-tuned", "change"], rows)
    _generation_note(doc, base_overall, " (base model)")
    _generation_note(doc, overall, " (fine-tuned model)")
    if has_intervals:
        doc.paragraph(f"In parentheses: {'the ' + format(confidence, '.0%') if confidence else 'the'} percentile "
                      "bootstrap interval over the examples of the evaluation set (`MetricSuite`, seeded).")
    for title, parts in (("Per slice, fine-tuned model:", slices), ("Per slice, base model:", base_slices)):
        if parts:
            metrics = list(dict.fromkeys(m for entry in parts.values() for m in entry if m != "count"))
            doc.paragraph(title)
            doc.table(["slice", "count", *metrics],
                      [[name, entry.get("count", ""), *(_with_interval(*entry[m]) if m in entry else "" for m in metrics)]
                       for name, entry in parts.items()])


def add_results(doc: Document, results: Mapping[str, Any], confidence: float | None = None,
                baseline: Mapping[str, Any] | None = None) -> None:
    """A table of metric, value and interval (and a note when generation ran out of time); then one row
    per slice, when there are slices. With the base model's results (`baseline`, or ``baseline/<key>``
    keys in `results`), the two side by side instead (`add_comparison`)."""
    results, found = split_baseline(results)
    baseline = baseline or found
    if baseline:
        add_comparison(doc, results or {}, baseline, confidence)
        return
    overall, slices = split_results(results or {})
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
    _generation_note(doc, overall)
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
def validation_table(history: Sequence[Mapping[str, Any]], weights_step: int | None = None
                     ) -> tuple[list[str], list[list[str]]]:
    """One row per evaluation during `fit`: step, epoch, the latest training loss, validation metrics.
    The row of `weights_step` (the step the saved weights come from) says so in its step cell."""
    evals = [r for r in history if any(str(k).startswith("validation/") for k in r)]
    keys = list(dict.fromkeys(k for r in evals for k in r if str(k).startswith("validation/")
                              and not str(k).endswith(INTERVAL_SUFFIXES)))
    header = ["step", "epoch", "train loss",
              *("validation loss" if k == "validation/loss" else k.split("/", 1)[1] for k in keys)]
    rows = []
    for record in evals:
        train = [r["train/loss"] for r in history if "train/loss" in r and r.get("step", 0) <= record.get("step", 0)]
        epoch = record.get("epoch", "")
        step = str(record.get("step", ""))
        if weights_step is not None and record.get("step") == weights_step:
            step += " (saved weights)"
        rows.append([step, f"{epoch:g}" if isinstance(epoch, (int, float)) else str(epoch),
                     fmt(train[-1]) if train else "", *(fmt(record[k]) if k in record else "" for k in keys)])
    return header, rows


def add_validation(doc: Document, history: Sequence[Mapping[str, Any]], weights_step: int | None = None) -> bool:
    """The validation table (the row of `weights_step` marked); False (and nothing added) when the
    history holds no evaluation."""
    header, rows = validation_table(history, weights_step)
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


def add_data(doc: Document, run: RunInfo, data_report: Any = None) -> None:
    """Sizes and label balance per split from a `DataReport` (or its `to_dict()`, or a string;
    default `run.data_summary`); without one, what the Preprocessor counted, and the label names."""
    if data_report is None:
        data_report = run.data_summary
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
        counts = {k: v for k, v in run.encode_counts.items() if k != "predict"}
        if counts:
            doc.table(["split", "examples", "truncated to max_length"],
                      [[name, examples, truncated] for name, (examples, truncated) in counts.items()])
        else:
            doc.paragraph("No data summary was recorded.")
    details = []
    if run.label_names:
        details.append("labels (id order): " + ", ".join(f"`{n}`" for n in run.label_names))
    details.append("cleaning: " + (", ".join(f"`{s}`" for s in run.cleaning) if run.cleaning else "none"))
    if run.max_length is not None:
        details.append(f"max_length used in training: {run.max_length} tokens (longer examples were truncated)")
    if run.pack_length is not None:
        details.append(f"training examples packed into rows of {run.pack_length} tokens")
    doc.bullets(details)


# ---- freezing, settings, versions ------------------------------------------------------------------------
def adapter_sentence(adapter: Mapping[str, Any], saved_as: str | None = None) -> str:
    """The adapter in one sentence: method, rank, scale, where it went, trainable parameters, and (with
    `saved_as` "adapter" or "merged") what the saved folder holds."""
    text = (f"{adapter.get('method', 'Adapter')} adapters (r={adapter.get('r')}, alpha={adapter.get('alpha')}, "
            f"dropout={adapter.get('dropout')}, target_modules={adapter.get('target_modules')!r})")
    if adapter.get("adapted_layers"):
        blocks = adapter.get("blocks") or []
        where = f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"block {blocks[0]}" if blocks else "the model"
        text += (f" on {adapter['adapted_layers']} linear layers ({', '.join(adapter.get('layer_names', []))}) of "
                 f"{where}")
    text += " were trained; the base weights stayed frozen"
    if adapter.get("modules_to_save"):
        text += f" except {', '.join(f'`{m}`' for m in adapter['modules_to_save'])} (trained in full)"
    if adapter.get("trainable_parameters") is not None:
        text += f". Trainable parameters: {adapter['trainable_parameters']:,}"
        if adapter.get("total_parameters"):
            text += f" of {adapter['total_parameters']:,}"
    text += "."
    if saved_as == "adapter":
        text += (" This folder holds the adapter only (peft's format): `peft.AutoPeftModelForCausalLM` or "
                 "`pipeline()` with peft installed load it on top of the base model its `adapter_config.json` names.")
    elif saved_as == "merged":
        text += " The adapters are merged into the weights of this folder: it loads without peft."
    return text


def freezing_heading(run: RunInfo) -> str:
    """The heading of `add_freezing`'s section: it names the adapter when one was trained."""
    if not run.adapter:
        return "Layer freezing"
    return "Adapters" if run.freezer is None else "Adapters and layer freezing"


def add_freezing(doc: Document, run: RunInfo, summary: Any = None) -> None:
    """The LayerFreezer's settings and its table of trainable and frozen parameters per part; the adapter,
    when one was trained."""
    summary = summary if summary is not None else run.freeze_summary
    if run.adapter:
        doc.paragraph(adapter_sentence(run.adapter, run.adapter.get("saved_as")))
    if run.freezer is None and run.adapter:
        return
    if run.freezer is None:
        text = "No layer freezing: every parameter was trained."
        if run.trainable_parameters is not None and run.total_parameters is not None:
            text += f" ({run.trainable_parameters:,} of {run.total_parameters:,} parameters trainable.)"
        doc.paragraph(text)
    else:
        doc.paragraph(f"`{run.freezer}`")
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


def _setting(value: Any) -> Any:
    return f"`{value!r}`" if isinstance(value, str) else value


def add_settings(doc: Document, run: RunInfo) -> None:
    """The settings used as a table, then precision, regularizers and metrics (with their signatures)."""
    doc.table(["setting", "value"], [[k, _setting(v)] for k, v in run.settings.items()])
    extra = []
    if run.precision is not None:
        extra.append(f"precision used: `{run.precision}`")
    extra.append("regularizers: " + ("; ".join(run.regularizers) or "none"))
    extra += [f"{what}: " + (", ".join(f"`{k}` {v}" for k, v in value.items()) if isinstance(value, dict) else str(value))
              for what, value in getattr(run, "task_details", {}).items()]  # class weights, thresholds, scaling
    if run.metrics:
        signatures = run.metric_signatures
        extra.append("metrics: " + ", ".join(
            f"`{n}`" + (f" (signature `{signatures[n]}`)" if n in signatures else "") for n in run.metrics))
    doc.bullets(extra)


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
