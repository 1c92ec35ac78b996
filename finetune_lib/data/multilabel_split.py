"""Iterative stratification of multi-label data (Sechidis, Tsoumakas and Vlahavas, "On the
Stratification of Multi-Label Data", ECML PKDD 2011), used by ``DatasetBuilder.split(stratify=True)``
when the labels are lists.

A plain stratified split keeps the proportions of each *label set*, which fails for multi-label
data: most label sets are rare or unique. The iterative algorithm keeps the proportions of each
*label* instead, and serves the rarest labels first, while every split still has room:

1. Each split j wants ``c_j`` examples (its size) and, for each label l, ``c_j^l = count(l) * c_j / n``.
2. Take the label with the fewest examples left to place (ties broken at random, seeded).
3. Place each of its examples in the split that most wants that label (largest ``c_j^l``; ties: largest
   ``c_j``, then at random), among the splits with room left; subtract the example from that split's
   wants, for every label the example has.
4. Examples without labels go to the splits with the most room left.

One addition to the paper: while a label has at least as many examples left as there are splits
without any example of it (and with room), its examples go to those splits first. So a rare label
with at least one example per split lands in every split (a label with 3 examples in a
train/validation/test split: one in each), which evaluation per label needs. Split sizes are exact.

Example:
    >>> label_sets = [["a"], ["a", "b"], ["b"], ["a"], ["c"], ["c", "a"], ["b"], ["c"]]
    >>> parts = iterative_stratification(label_sets, [4, 2, 2], seed=0)
    >>> [len(p) for p in parts]
    [4, 2, 2]
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np


def iterative_stratification(label_sets: Sequence[Iterable[Hashable]], sizes: Sequence[int],
                             seed: int = 0) -> list[list[int]]:
    """Split example indices into ``len(sizes)`` parts of exactly `sizes` examples, keeping each label's share.

    Args:
        label_sets: the labels of each example (a list, tuple or set of hashable names; may be empty).
        sizes: examples per part; they must add up to ``len(label_sets)``.
        seed: the same seed gives the same parts.

    Returns:
        The example indices of each part, in `sizes`' order (each list sorted).
    """
    n, k = len(label_sets), len(sizes)
    if sum(sizes) != n or any(s < 0 for s in sizes):
        raise ValueError(f"sizes {list(sizes)} must be >= 0 and add up to the {n} examples")
    rng = np.random.default_rng(seed)
    sets = [set(s) for s in label_sets]
    labels = sorted({label for s in sets for label in s}, key=lambda x: (type(x).__name__, str(x)))
    room = np.asarray(sizes, dtype=float)  # c_j: examples each part still takes
    share = room / max(n, 1)
    remaining: dict[Hashable, set[int]] = {label: set() for label in labels}
    for i, s in enumerate(sets):
        for label in s:
            remaining[label].add(i)
    wants = {label: len(members) * share for label, members in remaining.items()}  # c_j^l
    present = {label: np.zeros(k, dtype=int) for label in labels}
    parts: list[list[int]] = [[] for _ in range(k)]
    placed = np.zeros(n, dtype=bool)

    def pick(candidates: list[int], label: Hashable | None) -> int:
        """The part that most wants `label` (then has most room), ties at random."""
        keys = [((wants[label][j] if label is not None else 0.0), room[j]) for j in candidates]
        best = max(keys)
        tied = [j for j, key in zip(candidates, keys) if key == best]
        return tied[int(rng.integers(len(tied)))]

    def place(i: int, j: int) -> None:
        parts[j].append(i)
        placed[i] = True
        room[j] -= 1
        for label in sets[i]:
            wants[label][j] -= 1
            present[label][j] += 1
            remaining[label].discard(i)

    while any(remaining[label] for label in labels):
        # the label with the fewest examples left to place (ties at random)
        left = {label: len(remaining[label]) for label in labels if remaining[label]}
        fewest = min(left.values())
        tied = [label for label, count in left.items() if count == fewest]
        label = tied[int(rng.integers(len(tied)))]
        for i in rng.permutation(sorted(remaining[label])).tolist():
            open_parts = [j for j in range(k) if room[j] > 0]
            missing = [j for j in open_parts if present[label][j] == 0]
            if missing and len(remaining[label]) >= len(missing):  # first one example in every part
                place(i, pick(missing, label))
            else:
                place(i, pick(open_parts, label))
    for i in np.flatnonzero(~placed).tolist():  # examples without labels
        place(i, pick([j for j in range(k) if room[j] > 0], None))
    return [sorted(p) for p in parts]


__all__ = ["iterative_stratification"]
