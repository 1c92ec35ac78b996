"""Percentile-bootstrap confidence intervals over examples, from per-example statistics.

Memory trade-off: an interval needs to recompute the metric on resamples of the *examples*, so
while confidence intervals are requested the suite keeps, per metric, compact per-example rows
(`Metric.example_stats`): 2 ints per example (per non-ignored token for class metrics on LM
tasks), 2 floats per example for perplexity / token accuracy, ~10-24 ints for BLEU / chrF, the
strings for user text metrics. Without `confidence` nothing per-example is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Metric, NoDataError
from .state import all_gather_objects

Stats = torch.Tensor | list


def take(stats: Stats, index: np.ndarray) -> Stats:
    """Rows `index` of a stats tensor or list."""
    if isinstance(stats, torch.Tensor):
        return stats.index_select(0, torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)))
    return [stats[i] for i in index.tolist()]


def concat(chunks: list[Stats]) -> Stats:
    """Chunks of stats (all tensors, or all lists) joined."""
    tensors = [c for c in chunks if isinstance(c, torch.Tensor)]
    if chunks and len(tensors) == len(chunks):
        return torch.cat(tensors)
    return [row for chunk in chunks for row in chunk]


class ExampleStats:
    """Per-example statistics of each metric, and the example each row belongs to."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[Stats]] = {}
        self.owners: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, stats: Stats, owners: np.ndarray) -> None:
        """Adds rows `stats` of metric `name`; `owners[i]` is the example index of row i."""
        if len(stats) != len(owners):
            raise ValueError(f"example_stats of {name!r} gave {len(stats)} rows for {len(owners)} examples")
        if len(owners):
            self.chunks.setdefault(name, []).append(stats)
            self.owners.setdefault(name, []).append(owners)

    def gathered(self, rank_offsets: list[int]) -> dict[str, tuple[Stats, np.ndarray]]:
        """All rows of every process (rank order), with example indices shifted to global ones."""
        local = {name: (concat(c), np.concatenate(self.owners[name])) for name, c in self.chunks.items()}
        out: dict[str, tuple[list[Stats], list[np.ndarray]]] = {}
        for shift, part in zip(rank_offsets, all_gather_objects(local) if len(rank_offsets) > 1 else [local]):
            for name, (stats, owners) in part.items():
                out.setdefault(name, ([], []))
                out[name][0].append(stats)
                out[name][1].append(owners + shift)
        return {name: (concat(s), np.concatenate(o)) for name, (s, o) in out.items()}


def restrict(
    stats: Stats, owners: np.ndarray, examples: np.ndarray, n_total: int
) -> tuple[Stats, np.ndarray]:
    """The rows of `examples` only, with owners renumbered 0..len(examples)-1."""
    local = np.full(n_total, -1, dtype=np.int64)
    local[examples] = np.arange(len(examples))
    mapped = local[owners] if len(owners) else owners
    keep = np.flatnonzero(mapped >= 0)
    return take(stats, keep), mapped[keep]


def bootstrap_interval(
    metric: Metric,
    stats: Stats,
    owners: np.ndarray,
    n_examples: int,
    confidence: float,
    n_bootstrap: int,
    seed: int,
) -> tuple[float, float]:
    """Seeded percentile bootstrap: resample the `n_examples` examples with replacement
    `n_bootstrap` times, recompute `metric` on the rows of the drawn examples, and return the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (NaN when nothing computes)."""
    if n_examples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(owners))
    values = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        drawn = np.bincount(rng.integers(0, n_examples, n_examples), minlength=n_examples)
        index = np.repeat(rows, drawn[owners]) if len(owners) else rows
        if not len(index):  # the drawn examples hold no rows (e.g. every token ignored)
            values[b] = np.nan
            continue
        try:
            values[b] = float(metric.compute_from_stats(take(stats, index)))
        except NoDataError:
            values[b] = np.nan
    if np.isnan(values).all():
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low, high = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def is_scalar(value: Any) -> bool:
    """Whether a computed value goes in the flat dict (a number or a one-element tensor/array)."""
    if isinstance(value, (bool, int, float, np.number)):
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    if isinstance(value, np.ndarray):
        return value.size == 1
    return False
