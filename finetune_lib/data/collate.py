"""Batches: dynamic padding and length-grouped, shuffled batch order.

`LengthGroupedBatches` shuffles examples, cuts them into mega-batches of `mega` batches, sorts each
mega-batch by length so batches hold similar lengths (little padding), then shuffles the order of
the batches themselves. That last shuffle matters: a sampler that leaves every mega-batch ordered
long-to-short feeds the optimizer a sweep of lengths, which has been seen to wreck accuracy. The
order depends only on (seed, epoch), so a resumed run regenerates it and skips what was done.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


def collate(features: Sequence[dict[str, list[int]]], pad_token_id: int, pad_to_multiple_of: int | None = None,
            padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of features (dicts of int lists) to the longest in the batch (packed rows go through
    `finetune_lib.data.packing.collate_packed`, which adds their block-diagonal mask).

    `input_ids` are padded with `pad_token_id`, `attention_mask` with 0, `labels` with -100 when
    they are sequences of ids (a scalar label per example stays a 1-d tensor), `position_ids` with 0,
    `word_ids` (token classification: the word of each token) with -1.
    Float labels (a regression value, or a multi-label row of 0.0/1.0 per label) become a float32
    tensor `[B]` or `[B, L]`, unpadded.
    """
    keys = features[0].keys()
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [f[key] for f in features]
        if key == "labels" and _float_labels(values[0]):  # regression values, multi-label 0/1 rows: not padded
            batch[key] = torch.tensor(values, dtype=torch.float32)
            continue
        if not isinstance(values[0], (list, tuple)):
            batch[key] = torch.tensor(values, dtype=torch.long)
            continue
        fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "word_ids": -1}.get(key, 0)
        w = width if key != "labels" or len(values[0]) == len(features[0]["input_ids"]) else max(map(len, values))
        out = torch.full((len(values), w), fill, dtype=torch.long)
        for i, v in enumerate(values):
            if not v:
                continue
            t = torch.as_tensor(v, dtype=torch.long)
            if padding_side == "left":
                out[i, w - len(v):] = t
            else:
                out[i, : len(v)] = t
        batch[key] = out
    return batch


def _float_labels(value: object) -> bool:
    """A float label, or a row of floats (multi-label): kept as floats, never padded."""
    if isinstance(value, (list, tuple)):
        return bool(value) and isinstance(value[0], float)
    return isinstance(value, float)


class LengthGroupedBatches:
    """Batches of indices, grouped by length, in an order fixed by (seed, epoch).

    Args:
        lengths: length of each example.
        batch_size: examples per batch.
        seed: base seed; epoch e uses seed + e.
        group_by_length: False gives plain shuffled batches.
        mega: batches per mega-batch that are sorted together.
        drop_last: drop a last, smaller batch.

    Example:
        >>> batches = LengthGroupedBatches([5, 3, 9, 4], batch_size=2, seed=0)
        >>> list(batches.epoch(0))  # doctest: +SKIP
        [[2, 0], [3, 1]]
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0,
                 group_by_length: bool = True, mega: int = 50, drop_last: bool = False):
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)  # a numpy array: no Python loop per example
        self.batch_size, self.seed, self.group_by_length = batch_size, seed, group_by_length
        self.mega, self.drop_last = mega, drop_last

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).numpy()
        if self.group_by_length:
            # longest first within each mega-batch, ties in shuffled order (a stable sort, vectorized)
            mega_batch = np.arange(len(order)) // (self.batch_size * self.mega)
            order = order[np.lexsort((-self.lengths[order], mega_batch))]
        flat = order.tolist()
        batches = [flat[i: i + self.batch_size] for i in range(0, len(flat), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.group_by_length:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches


def feature_lengths(pre: Any, features: Sequence[dict[str, Any]]) -> Sequence[int]:
    """`pre.length` of every feature: the `lengths()` of `ArrowFeatures` (a numpy array, computed
    column-wise), else one call per feature.

    Example:
        >>> feature_lengths(pre, [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
        [3, 1]
    """
    lengths = getattr(features, "lengths", None)
    return lengths() if callable(lengths) else [pre.length(f) for f in features]


def gather(features: Sequence[dict[str, Any]], indices: Sequence[int]) -> list[dict[str, Any]]:
    """The features at `indices`: one batch read (`take`) from `ArrowFeatures`, else a list lookup.

    Example:
        >>> gather([{"input_ids": [1]}, {"input_ids": [2]}], [1, 0])
        [{'input_ids': [2]}, {'input_ids': [1]}]
    """
    take = getattr(features, "take", None)
    return take(indices) if callable(take) else [features[i] for i in indices]


def sequential_batches(n: int, batch_size: int, lengths: Sequence[int] | None = None) -> Iterator[list[int]]:
    """Evaluation batches: sorted by length when lengths are given (less padding), else in order."""
    order = sorted(range(n), key=lambda i: -lengths[i]) if lengths is not None else list(range(n))
    for i in range(0, n, batch_size):
        yield order[i: i + batch_size]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
