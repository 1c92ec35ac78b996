"""``DataReport``: sizes, label balance, lengths, truncation, dropped rows, leakage and warnings.

Built by ``DatasetBuilder.report()`` and ``Splits.report()``; ``print(report)`` shows a table,
``report.to_dict()`` gives plain data (for JSON, a model card, a notebook).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .records import record_text

__all__ = ["DataReport", "SplitStats", "build_report", "token_lengths"]

TINY = 100
"""Fewer training examples than this gives a warning."""
IMBALANCE = 10.0
"""A most/least frequent label ratio above this gives a warning."""
TRUNCATED = 0.05
"""A fraction of examples longer than ``max_length`` above this gives a warning."""


@dataclass
class SplitStats:
    """Statistics of one split."""

    name: str
    size: int
    labels: dict[Any, int] = field(default_factory=dict)
    """Count per label, most frequent first (empty without labels)."""
    chars: dict[str, float] = field(default_factory=dict)
    """Length in characters of the model input (``text``, or ``prompt`` + ``target``): min/median/p95/max/mean."""
    tokens: dict[str, float] | None = None
    """The same in tokens, when a tokenizer was given (special tokens included)."""
    truncated: int | None = None
    """Examples longer than ``max_length`` tokens, when both a tokenizer and ``max_length`` were given."""


@dataclass
class DataReport:
    """What a data set looks like before training; see the module docstring."""

    splits: list[SplitStats]
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped while loading, per reason."""
    dedup: dict[str, int] = field(default_factory=dict)
    """Records removed by ``deduplicate()`` per stage, and label conflicts."""
    leakage: dict[str, Any] | None = None
    """Per pair of splits, duplicates shared between them (``Splits`` only)."""
    max_length: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; label keys become strings so that the result is JSON-serializable."""
        out = asdict(self)
        for split in out["splits"]:
            split["labels"] = {str(k): v for k, v in split["labels"].items()}
        return out

    def __getitem__(self, name: str) -> SplitStats:
        for split in self.splits:
            if split.name == name:
                return split
        raise KeyError(f"no split {name!r}; splits: {[s.name for s in self.splits]}")

    def __str__(self) -> str:
        def stats(d: Mapping[str, float] | None) -> str:
            return "-" if not d else "/".join(f"{d[k]:g}" for k in ("min", "median", "p95", "max"))

        def labels(s: SplitStats) -> str:
            if not s.labels:
                return "-"
            shown = [f"{k}: {v} ({v / s.size:.0%})" for k, v in list(s.labels.items())[:4]]
            more = len(s.labels) - 4
            return ", ".join(shown) + (f", +{more} more" if more > 0 else "")

        header = ["split", "size", "labels", "chars min/med/p95/max"]
        has_tokens = any(s.tokens for s in self.splits)
        if has_tokens:
            header.append("tokens min/med/p95/max")
        if self.max_length is not None:
            header.append(f"> {self.max_length} tokens")
        rows = []
        for s in self.splits:
            row = [s.name, str(s.size), labels(s), stats(s.chars)]
            if has_tokens:
                row.append(stats(s.tokens))
            if self.max_length is not None:
                row.append("-" if s.truncated is None else f"{s.truncated} ({s.truncated / max(s.size, 1):.1%})")
            rows.append(row)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["Data report", "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        if self.dropped:
            lines.append("dropped while loading: " + ", ".join(f"{k} {v}" for k, v in self.dropped.items()))
        if any(self.dedup.values()):
            lines.append("deduplication: " + ", ".join(f"{k} {v}" for k, v in self.dedup.items()))
        if self.leakage is not None:
            leaks = {k: v["exact"] + v["normalized"] + v.get("near", 0) for k, v in self.leakage.items()}
            lines.append("leakage: " + ", ".join(f"{k} {v}" for k, v in leaks.items()))
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _summary(lengths: Sequence[int]) -> dict[str, float]:
    if not len(lengths):
        return {}
    a = np.asarray(lengths)
    return {"min": int(a.min()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": int(a.max()), "mean": round(float(a.mean()), 2)}


def token_lengths(tokenizer: Any, texts: Sequence[str], batch_size: int = 1000) -> list[int]:
    """Token counts (with special tokens) from a Hugging Face tokenizer or a ``tokenizers.Tokenizer``."""
    lengths: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        if callable(tokenizer):
            ids = tokenizer(batch, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            lengths += [len(x) for x in ids]
        elif hasattr(tokenizer, "encode_batch"):
            lengths += [len(e.ids) for e in tokenizer.encode_batch(batch)]
        else:
            raise TypeError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    return lengths


def _arrow_text_column(records: Any) -> bool:
    """Arrow-backed records whose model input is their ``text`` column (read column-wise here)."""
    from .arrow_data import column_names, is_arrow

    if not is_arrow(records):
        return False
    import pyarrow as pa

    from .arrow_data import hf_dataset

    names = column_names(records)
    if "text" not in names or "messages" in names or "tokens" in names:
        return False
    column = hf_dataset(records).data.column("text")  # the whole table's: strings without nulls (as from_hf makes)
    return (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and column.null_count == 0


def _arrow_label_counts(records: Any) -> dict[Any, int]:
    """The label counts of Arrow-backed records, as the row-by-row loop counts them, with ``value_counts``."""
    from .arrow_data import column_names, label_counts

    if "label" not in column_names(records):
        return {}
    labels: dict[Any, int] = {}
    for value, n in zip(*label_counts(records), strict=True):
        if value is None or (isinstance(value, float) and not value.is_integer()):
            continue  # regression targets are numbers, not classes to count
        labels[value] = labels.get(value, 0) + n
    return labels


def _split_stats(name: str, records: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int | None
                 ) -> SplitStats:
    labels: dict[Any, int] = {}
    texts: Any
    if _arrow_text_column(records):  # column-wise: no Python record per row
        import pyarrow.compute as pc

        from .arrow_data import arrow_column

        column = arrow_column(records, "text")
        lengths = pc.utf8_length(column).to_numpy()  # code points, as len(str)
        texts = _LazyTexts(column)
        labels = _arrow_label_counts(records)
    else:
        texts = [record_text(r) for r in records]
        lengths = [len(t) for t in texts]
        for r in records:
            value = r.get("label")
            if value is None or (isinstance(value, float) and not value.is_integer()):
                continue  # regression targets are numbers, not classes to count
            for label in value if isinstance(value, (list, tuple)) else [value]:  # multi-label: each label once
                labels[label] = labels.get(label, 0) + 1
    try:  # most frequent first; ties in label order
        ordered = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))
    except TypeError:
        ordered = sorted(labels.items(), key=lambda kv: -kv[1])
    stats = SplitStats(name, len(records), dict(ordered), _summary(lengths))
    if tokenizer is not None:
        lengths = token_lengths(tokenizer, texts)
        stats.tokens = _summary(lengths)
        if max_length is not None:
            stats.truncated = sum(n > max_length for n in lengths)
    return stats


class _LazyTexts:
    """A column of strings read a slice at a time (``token_lengths`` takes slices)."""

    def __init__(self, column: Any) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, index: slice) -> list[str]:
        start, stop, _ = index.indices(len(self.column))
        return self.column.slice(start, stop - start).to_pylist()


def _warnings(report: DataReport) -> list[str]:
    warnings = []
    train = report.splits[0]
    if train.size < TINY:
        warnings.append(f"tiny data set: {train.size} {train.name} examples (< {TINY}); expect noisy results: "
                        "train few layers (LayerFreezer), use early stopping and compare several seeds")
    if len(train.labels) > 1:
        counts = list(train.labels.values())
        ratio = counts[0] / counts[-1]
        if ratio > IMBALANCE:
            most, least = list(train.labels)[0], list(train.labels)[-1]
            warnings.append(f"heavy label imbalance in {train.name}: {ratio:.0f}:1 ({most!r} {counts[0]} vs "
                            f"{least!r} {counts[-1]}); use stratify=True, report macro-F1, consider class weights")
    for split in report.splits[1:]:
        missing = [label for label in train.labels if label not in split.labels]
        if split.size and missing:
            warnings.append(f"{split.name} has no example of label(s) {missing[:5]}")
        unseen = [label for label in split.labels if label not in train.labels]
        if unseen:
            warnings.append(f"{split.name} has label(s) {unseen[:5]} that {train.name} lacks")
    for split in report.splits:
        if split.truncated and split.truncated / split.size > TRUNCATED:
            warnings.append(f"{split.truncated / split.size:.0%} of {split.name} examples are longer than "
                            f"max_length={report.max_length} tokens and would be truncated; raise max_length "
                            "or shorten the texts")
    if report.dedup.get("label_conflicts"):
        warnings.append(f"{report.dedup['label_conflicts']} duplicate text(s) had conflicting labels "
                        "(the majority label was kept); check the labelling")
    if report.leakage:
        leaked = sum(v["exact"] + v["normalized"] + v.get("near", 0) for v in report.leakage.values())
        if leaked:
            warnings.append(f"leakage: {leaked} validation/test example(s) duplicate earlier splits; "
                            "call splits.remove_leakage() (or deduplicate() before split())")
    return warnings


def build_report(parts: Mapping[str, Sequence[Mapping[str, Any]]], tokenizer: Any = None,
                 max_length: int | None = None, dropped: Mapping[str, int] | None = None,
                 dedup: Mapping[str, int] | None = None, leakage: Mapping[str, Any] | None = None) -> DataReport:
    """A :class:`DataReport` over named parts (the first is the training data), with warnings."""
    if max_length is not None and tokenizer is None:
        raise ValueError("max_length counts tokens: pass a tokenizer too, e.g. report(tokenizer=tok, max_length=128)")
    splits = [_split_stats(name, recs, tokenizer, max_length) for name, recs in parts.items()]
    report = DataReport(splits, dict(dropped or {}), dict(dedup or {}),
                        None if leakage is None else dict(leakage), max_length)
    report.warnings = _warnings(report)
    return report
