import itertools
import random
import time

import pytest

from finetune_lib.data.builder import DatasetBuilder
from finetune_lib.data.dedup import (
    deduplicate,
    find_leakage,
    near_duplicate_pairs,
    normalize_for_dedup,
)


def _shingles(text, n=5):
    return {text[i : i + n] for i in range(max(len(text) - n + 1, 1))}


def _jaccard(a, b):
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def _texts(n, seed=0):
    rng = random.Random(seed)
    words = ("battery screen phone charger great terrible case signal sound quality works broke fast "
             "slow love hate cheap value headset bluetooth volume refund order late arrived perfectly").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 20))) for _ in range(n)]


def test_normalize_for_dedup():
    assert normalize_for_dedup("  The  Phone, isn't GREAT!! ") == "the phone isnt great"
    assert normalize_for_dedup("ＷＯＷ\u00a0wow") == "wow wow"
    assert normalize_for_dedup("a-b") == normalize_for_dedup("ab")


def test_exact_and_normalized_counts():
    records = [
        {"text": "Great phone!", "label": 1},
        {"text": "Great phone!", "label": 1},  # exact
        {"text": "great   PHONE", "label": 1},  # normalized
        {"text": "Bad phone", "label": 0},
        {"text": "bad phone.", "label": 0},  # normalized
        {"text": "Something else", "label": 0},
    ]
    kept, counts = deduplicate(records)
    assert [r["text"] for r in kept] == ["Great phone!", "Bad phone", "Something else"]
    assert counts == {"exact": 1, "normalized": 2, "near": 0, "label_conflicts": 0}
    kept, counts = deduplicate(records, normalized=False)
    assert len(kept) == 5 and counts["exact"] == 1 and counts["normalized"] == 0


def test_label_conflicts_keep_majority_and_count():
    records = [
        {"text": "meh phone", "label": "pos"},
        {"text": "meh phone", "label": "neg"},
        {"text": "Meh phone.", "label": "neg"},
        {"text": "tie", "label": "a"},
        {"text": "tie", "label": "b"},
        {"text": "fine", "label": "pos"},
    ]
    kept, counts = deduplicate(records)
    assert kept == [{"text": "meh phone", "label": "neg"}, {"text": "tie", "label": "a"},
                    {"text": "fine", "label": "pos"}]
    assert counts["label_conflicts"] == 2
    assert records[0]["label"] == "pos"  # the input is not modified


def test_near_duplicates_counted():
    base = _texts(50, seed=1)
    records = [{"text": t} for t in base]
    records.append({"text": base[3] + " x"})  # one character n-gram more: Jaccard > 0.9
    records.append({"text": base[7].replace(" ", "  ", 1) + "!"})  # normalized duplicate
    kept, counts = deduplicate(records, near=True, threshold=0.8)
    assert counts["normalized"] == 1
    assert counts["near"] >= 1
    assert len(kept) == len(records) - counts["exact"] - counts["normalized"] - counts["near"]
    assert all(r["text"] != base[3] + " x" for r in kept)


def test_near_pairs_match_brute_force():
    rng = random.Random(3)
    texts = _texts(120, seed=2)
    for i in range(30):  # plant edited copies
        words = texts[i].split()
        words[rng.randrange(len(words))] = rng.choice(["phone", "screen", "x"])
        texts.append(" ".join(words))
    expected = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
                if _jaccard(texts[i], texts[j]) >= 0.7}
    found = near_duplicate_pairs(texts, threshold=0.7)
    assert {(i, j) for i, j, _ in found} == expected
    assert all(abs(s - _jaccard(texts[i], texts[j])) < 1e-9 for i, j, s in found)
    assert len(expected) >= 20


def test_near_duplicates_fast_on_10k():
    texts = _texts(10_000, seed=4)
    texts += [t + " ok" for t in texts[:100]]
    start = time.perf_counter()
    pairs = near_duplicate_pairs([normalize_for_dedup(t) for t in texts], threshold=0.9)
    elapsed = time.perf_counter() - start
    assert {(i, 10_000 + i) for i in range(100) if _jaccard(texts[i], texts[i] + " ok") >= 0.9} <= {
        (i, j) for i, j, _ in pairs}
    assert elapsed < 10, f"near-duplicate search took {elapsed:.1f}s on 10k texts"


def test_threshold_validation():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_pairs(["a", "b"], threshold=0)


def test_generation_records_compare_prompt_and_target():
    records = [{"prompt": "Q", "target": "A"}, {"prompt": "Q", "target": "A"}, {"prompt": "Q", "target": "B"},
               {"prompt": "Q A", "target": ""}]
    kept, counts = deduplicate(records, normalized=False)
    assert len(kept) == 3 and counts["exact"] == 1


def test_builder_deduplicate_chainable_and_accumulates():
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(["a b", "a b", "A  b!", "c", "d"])]
    b = DatasetBuilder.from_records(rows)
    assert b.deduplicate(normalized=False) is b
    assert len(b) == 4 and b.dedup_counts["exact"] == 1
    b.deduplicate()
    assert len(b) == 3
    assert b.dedup_counts == {"exact": 1, "normalized": 1, "near": 0, "label_conflicts": 1}
    assert "label_conflicts 1" in str(b.report())


def test_find_leakage_pairs():
    parts = {"train": [{"text": "a b"}, {"text": "c"}], "validation": [{"text": "a b"}, {"text": "z"}],
             "test": [{"text": "A B!"}, {"text": "z"}, {"text": "new"}]}
    report = find_leakage(parts)
    assert report.pairs["train/validation"]["exact"] == 1
    assert report.pairs["train/test"] == {"exact": 0, "normalized": 1, "near": 0, "examples": ["A B!"]}
    assert report.pairs["validation/test"]["exact"] == 1
    assert report.total == 4 and bool(report)
    assert "train/test" in str(report)
    assert not find_leakage({"train": [{"text": "x"}], "test": [{"text": "y"}]})
