"""How one `EvalBatch` reaches each metric (`route`), and per-slice clones of the metrics (`Slices`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import Metric
from .batch import EvalBatch
from .state import all_gather_objects

IGNORE_INDEX = -100
SliceSpec = Mapping[str, Callable[[dict[str, Any]], bool]] | str


@dataclass
class Routed:
    """What one batch gives each kind of metric, and the batch row of each class-id entry."""

    size: int
    inputs: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    class_rows: torch.Tensor | None = None

    def rows(self, kind: str) -> np.ndarray:
        """Batch row of each entry that a metric of this kind is fed."""
        if kind == "classes" and self.class_rows is not None:
            return self.class_rows.numpy()
        return np.arange(self.size)

    def subset(self, rows: list[int]) -> Routed:
        """The inputs of batch rows `rows` only (for a slice)."""
        out = Routed(len(rows))
        index = torch.tensor(rows, dtype=torch.long)
        for kind, (a, b) in self.inputs.items():
            if kind in ("text", "tags"):
                out.inputs[kind] = ([a[i] for i in rows], [b[i] for i in rows])
            elif kind == "classes" and self.class_rows is not None:
                keep = torch.zeros(self.size, dtype=torch.bool)
                keep[index] = True
                keep = keep[self.class_rows]
                out.inputs[kind] = (a[keep], b[keep])
            else:
                out.inputs[kind] = (a[index.to(a.device)], b[index.to(b.device)])
        return out


def route(batch: EvalBatch, kinds: set[str], texts: list[str] | None) -> Routed:
    """Class ids, logits and text of one batch, each in the form its metrics consume."""
    routed = Routed(int(batch.labels.shape[0]))
    if "classes" in kinds:
        preds, labels = batch.preds, batch.labels
        if batch.task == "classification":
            routed.inputs["classes"] = (preds.reshape(-1).cpu(), labels.reshape(-1).cpu())
        else:  # LM tasks: token-level ids, positions without a loss (-100) dropped
            mask = labels != IGNORE_INDEX
            routed.inputs["classes"] = (preds[mask].cpu(), labels[mask].cpu())
            routed.class_rows = mask.nonzero()[:, 0].cpu()
    for kind in ("indicators", "values"):  # multi-label 0/1 matrices, regression values: the task's predictions
        if kind in kinds:
            routed.inputs[kind] = (batch.preds.cpu(), batch.labels.cpu())
    if "logits" in kinds:
        routed.inputs["logits"] = (batch.logits, batch.labels)
    if "text" in kinds:
        routed.inputs["text"] = (texts, list(batch.references or []))
    if "tags" in kinds:  # token classification: word-level tags per sentence (the task's `eval_extra`)
        if "tags" not in batch.extra:
            raise ValueError(f"metrics reading word-level tags need token_classification batches; this {batch.task!r} "
                             "batch has none in EvalBatch.extra['tags']")
        routed.inputs["tags"] = batch.extra["tags"]
    return routed


def feed(metrics: Sequence[Metric], routed: Routed) -> None:
    """Updates each metric with the inputs of its kind."""
    for metric in metrics:
        metric.update(*routed.inputs[metric.input])


class Slices:
    """One clone of the suite's metrics per slice, fed the rows of each batch in that slice."""

    def __init__(self, spec: SliceSpec, metrics: Sequence[Metric], keep_examples: bool = False) -> None:
        """`keep_examples`: also keep the indices of each slice's examples (for bootstrap intervals)."""
        if isinstance(spec, str):
            self.column: str | None = spec
            self.predicates: dict[str, Callable[[dict[str, Any]], bool]] = {}
        elif isinstance(spec, Mapping) and all(callable(p) for p in spec.values()):
            self.column, self.predicates = None, dict(spec)
        else:
            raise TypeError(
                f"slices must be a dict {{slice_name: predicate(record) -> bool}} or a record column name (str), got {spec!r}"
            )
        self.template, self.keep_examples = metrics, keep_examples
        self.metrics: dict[str, list[Metric]] = {}
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[np.ndarray]] = {}
        for name in self.predicates:
            self._ensure(name)

    def _ensure(self, name: str) -> None:
        if name not in self.metrics:
            self.metrics[name] = [m.clone() for m in self.template]
            self.counts[name], self.examples[name] = 0, []

    def names(self) -> list[str]:
        """Slice names in report order: the dict's order, or the sorted column values."""
        return list(self.predicates) if self.column is None else sorted(self.metrics)

    def _membership(self, records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
        if self.column is None:
            return {name: [i for i, r in enumerate(records) if p(r)] for name, p in self.predicates.items()}
        groups: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            if self.column not in record:
                raise KeyError(
                    f"slices={self.column!r}, but a record has no {self.column!r} column (it has {sorted(record)})"
                )
            groups.setdefault(str(record[self.column]), []).append(i)
        return groups

    def add(self, records: Sequence[dict[str, Any]], routed: Routed, offset: int) -> None:
        """Feeds each slice's metrics with its rows of this batch (`offset`: index of row 0)."""
        if len(records) != routed.size:
            raise ValueError(
                f"EvalBatch has {len(records)} records for {routed.size} rows; slices need one record per row"
            )
        for name, rows in self._membership(records).items():
            self._ensure(name)
            self.counts[name] += len(rows)
            if self.keep_examples:
                self.examples[name].append(np.asarray(rows, dtype=np.int64) + offset)
            if rows:
                feed(self.metrics[name], routed.subset(rows))

    def sync(self, offset: int) -> None:
        """Counts, example indices and metric states over all processes (slices seen by any)."""
        local = {name: (self.counts[name], self.example_ids(name) + offset) for name in self.metrics}
        counts: dict[str, int] = {}
        examples: dict[str, list[np.ndarray]] = {}
        for part in all_gather_objects(local):
            for name, (count, ids) in part.items():
                counts[name] = counts.get(name, 0) + count
                examples.setdefault(name, []).append(ids)
        for name in counts:
            self._ensure(name)
        self.counts, self.examples = counts, examples
        for name in self.names():
            for metric in self.metrics[name]:
                metric.sync()

    def example_ids(self, name: str) -> np.ndarray:
        """Indices (over the whole evaluation set) of the examples in slice `name`."""
        return np.concatenate(self.examples[name]) if self.examples[name] else np.zeros(0, dtype=np.int64)
