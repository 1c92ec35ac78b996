"""Iterative stratification (Sechidis et al. 2011): exact sizes, every example once, each label's share
kept better than a random split, rare labels in every split, seeded."""

import numpy as np
import pytest

from finetune_lib import DatasetBuilder
from finetune_lib.data.multilabel_split import iterative_stratification
from finetune_lib.data.records import DataError


def label_sets(n: int = 300, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    freq = {"common": 0.5, "mid": 0.2, "low": 0.08, "rare": 0.02}
    out = []
    for _ in range(n):
        labels = [name for name, p in freq.items() if rng.random() < p]
        out.append(labels or ["none"])
    out[:3] = [["very_rare"], ["very_rare", "common"], ["very_rare"]]  # 3 examples: one per split
    return out


def share_error(sets: list[list[str]], parts: list[list[int]]) -> float:
    """The largest gap between a label's share in a part and its share overall."""
    names = sorted({x for s in sets for x in s})
    worst = 0.0
    for name in names:
        overall = sum(name in s for s in sets) / len(sets)
        for part in parts:
            worst = max(worst, abs(sum(name in sets[i] for i in part) / len(part) - overall))
    return worst


def test_sizes_are_exact_and_every_example_is_placed_once():
    sets = label_sets()
    parts = iterative_stratification(sets, [30, 30, 240], seed=0)
    assert [len(p) for p in parts] == [30, 30, 240]
    assert sorted(i for p in parts for i in p) == list(range(len(sets)))


def test_label_shares_are_closer_than_a_random_split_and_rare_labels_reach_every_split():
    sets = label_sets()
    parts = iterative_stratification(sets, [30, 30, 240], seed=0)
    perm = np.random.default_rng(0).permutation(len(sets)).tolist()
    random_parts = [perm[:30], perm[30:60], perm[60:]]
    assert share_error(sets, parts) < share_error(sets, random_parts)
    for name in ("very_rare", "rare"):
        assert all(any(name in sets[i] for i in p) for p in parts)


def test_seeded_and_examples_without_labels_are_placed():
    sets = label_sets(60) + [[] for _ in range(6)]
    a = iterative_stratification(sets, [10, 10, 46], seed=3)
    assert a == iterative_stratification(sets, [10, 10, 46], seed=3)
    assert sorted(i for p in a for i in p) == list(range(66))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="add up to the 3 examples"):
        iterative_stratification([["a"], ["b"], ["a"]], [1, 1])


def test_builder_split_uses_it_and_refuses_mixed_labels():
    records = [{"text": f"text {i}", "label": s} for i, s in enumerate(label_sets(100))]
    splits = DatasetBuilder.from_records(records).split(validation=0.1, test=0.1, stratify=True, seed=1)
    assert splits.sizes == {"train": 80, "validation": 10, "test": 10}
    assert all(any("very_rare" in r["label"] for r in part) for part in (splits.train, splits.validation, splits.test))
    records[5]["label"] = "common"
    with pytest.raises(DataError):
        DatasetBuilder.from_records(records).split(validation=0.1, test=0.1, stratify=True)
