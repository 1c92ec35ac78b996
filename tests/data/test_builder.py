import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_lib.data.builder import DatasetBuilder, Splits, _round_table
from finetune_lib.data.loaders import DataError
from finetune_lib.data.records import Records
from finetune_lib.data.report import DataReport

AMAZON = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "amazon_cells_labelled.txt"


def make_records(n=200, labels=(0, 1), weights=None, groups=None, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        record = {"text": f"example number {i} " + " ".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 30))),
                  "label": rng.choices(labels, weights=weights)[0]}
        if groups:
            record["group"] = f"g{rng.randrange(groups)}"
        records.append(record)
    return records


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: one token per word plus [CLS] and [SEP]."""

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[0, *range(len(t.split())), 1] for t in texts]}


# --------------------------------------------------------------------------- builder basics


def test_builder_is_iterable_with_len_and_records():
    rows = make_records(10)
    b = DatasetBuilder.from_records(rows, name="mine")
    assert len(b) == 10 and list(b) == rows and b[0] == rows[0]
    assert isinstance(b.records, Records) and b.records.name == "mine"
    assert b.columns == ["text", "label"]
    assert "mine" in repr(b)
    assert b.filter(lambda r: r["label"] == 1) is b
    assert all(r["label"] == 1 for r in b)
    assert b.dropped == {"filtered": 10 - len(b)}


def test_records_helpers():
    r = Records([{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"prompt": "p", "target": "t"}], name="x")
    assert r[:2].name == "x" and isinstance(r[:2], Records)
    assert r.columns == ["text", "label", "prompt", "target"]
    assert r.texts == ["a", "b", "p t"]
    assert r.label_counts() == {1: 1, 0: 1}
    assert (r + [{"text": "c"}]).name == "x"
    import pickle

    again = pickle.loads(pickle.dumps(r))
    assert again == r and again.name == "x"


# --------------------------------------------------------------------------- splits


def test_random_split_sizes_ratios_and_counts():
    b = DatasetBuilder.from_records(make_records(200))
    s = b.split(validation=0.1, test=0.15, seed=1)
    assert s.sizes == {"train": 150, "validation": 20, "test": 30}
    assert [name for name, _ in s.items()] == ["train", "validation", "test"]
    assert s.train.name == "train" and s["test"] is s.test
    texts = s.train.texts + s.validation.texts + s.test.texts
    assert sorted(texts) == sorted(b.records.texts)
    s = b.split(validation=7, test=0, seed=1)
    assert s.sizes == {"train": 193, "validation": 7, "test": 0}
    assert isinstance(s.test, Records) and s.test.name == "test"


def test_same_seed_same_splits_other_seed_differs():
    b = DatasetBuilder.from_records(make_records(300, groups=20))
    for kwargs in ({}, {"stratify": True}, {"group": "group"}):
        first, again = b.split(seed=3, **kwargs), b.split(seed=3, **kwargs)
        assert (first.train, first.validation, first.test) == (again.train, again.validation, again.test)
        other = b.split(seed=4, **kwargs)
        assert other.test != first.test


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("validation", "test"), [(0.1, 0.1), (0.2, 0.05), (0, 0.2), (0.15, 0), (17, 23)])
def test_stratified_split_keeps_label_ratios(seed, validation, test):
    rows = make_records(487, labels=("a", "b", "c", "d"), weights=(60, 25, 10, 5), seed=seed)
    b = DatasetBuilder.from_records(rows)
    s = b.split(validation=validation, test=test, stratify=True, seed=seed)
    total = Counter(b.records.labels)
    n = len(b)
    for name, part in s.items():
        counts = Counter(part.labels)
        for label, k in total.items():
            ideal = k * len(part) / n
            assert abs(counts[label] - ideal) <= 1, (name, label, counts[label], ideal)


def test_stratified_single_holdout_matches_scikit_learn():
    from sklearn.model_selection import train_test_split

    rows = make_records(250, weights=(3, 1))
    b = DatasetBuilder.from_records(rows)
    s = b.split(validation=0, test=0.2, stratify=True, seed=7)
    _, test_idx = train_test_split(np.arange(250), test_size=0.2, stratify=[r["label"] for r in rows],
                                   random_state=7)
    assert list(s.test) == [rows[i] for i in sorted(test_idx)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=12), st.floats(0, 0.45), st.floats(0, 0.45),
       st.integers(0, 2**16))
def test_round_table_keeps_margins_within_one(rows, a, b, seed):
    rows = np.array(rows)
    n = rows.sum()
    cols = np.array([int(a * n), int(b * n), 0])
    cols[2] = n - cols[:2].sum()
    table = _round_table(rows, cols, np.random.default_rng(seed))
    assert (table.sum(1) == rows).all() and (table.sum(0) == cols).all()
    assert (np.abs(table - np.outer(rows, cols) / n) < 1).all()
    assert (table >= 0).all()


def test_grouped_split_never_shares_a_group():
    b = DatasetBuilder.from_records(make_records(400, groups=37))
    for seed in range(5):
        s = b.split(validation=0.1, test=0.1, group="group", seed=seed)
        seen = [{r["group"] for r in part} for _, part in s.items()]
        assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
        assert all(len(part) for _, part in s.items())
        assert sum(s.sizes.values()) == 400
        assert 20 <= len(s.test) <= 60


def test_split_errors():
    b = DatasetBuilder.from_records(make_records(20))
    assert b.split(validation=0.01, test=0.1).sizes == {"train": 17, "validation": 1, "test": 2}  # ratios round up
    with pytest.raises(DataError, match="cannot stratify"):
        b.split(validation=0, test=1, stratify=True)  # scikit-learn: fewer test records than classes
    with pytest.raises(DataError, match="no training records"):
        b.split(validation=10, test=10)
    with pytest.raises(ValueError, match="ratio"):
        b.split(validation=1.5)
    with pytest.raises(ValueError, match="cannot be combined"):
        b.split(stratify=True, group="group")
    with pytest.raises(DataError, match="needs a label"):
        DatasetBuilder.from_records([{"text": str(i)} for i in range(20)]).split(stratify=True)
    with pytest.raises(DataError, match="no 'group'"):
        b.split(group="group")
    one_group = DatasetBuilder.from_records([{"text": str(i), "group": "g"} for i in range(20)])
    with pytest.raises(DataError, match="would be empty"):
        one_group.split(group="group")


# --------------------------------------------------------------------------- leakage


def test_leakage_planted_and_removed():
    b = DatasetBuilder.from_records(make_records(200))
    s = b.split(validation=0.1, test=0.1, seed=0)
    assert not s.leakage()
    planted = Splits(
        s.train,
        Records([*s.validation, dict(s.train[0]), {**s.train[1], "text": s.train[1]["text"].upper() + "!"}],
                name="validation"),
        Records([*s.test, dict(s.train[2]), dict(s.validation[0])], name="test"),
    )
    report = planted.leakage()
    assert report.pairs["train/validation"]["exact"] == 1
    assert report.pairs["train/validation"]["normalized"] == 1
    assert report.pairs["train/test"]["exact"] == 1
    assert report.pairs["validation/test"]["exact"] == 1
    assert report.pairs["train/test"]["examples"] == [s.train[2]["text"]]
    assert report.total == 4
    cleaned = planted.remove_leakage()
    assert not cleaned.leakage()
    assert cleaned.sizes == s.sizes
    assert cleaned.dropped == {"leakage_validation": 2, "leakage_test": 2}
    assert cleaned.train is planted.train


def test_near_leakage():
    train = Records([{"text": "the battery lasts all day and the screen is bright"}], name="train")
    test = Records([{"text": "the battery lasts all day and the screen is bright!!! wow"}], name="test")
    s = Splits(train, test=test)
    assert not s.leakage()
    assert s.leakage(near=True, threshold=0.7).pairs["train/test"]["near"] == 1
    assert len(s.remove_leakage(near=True, threshold=0.7).test) == 0


# --------------------------------------------------------------------------- reports


def test_builder_report_and_warnings():
    rows = make_records(60, weights=(30, 1), seed=2) + [{"text": "x", "label": 1}]
    b = DatasetBuilder.from_records(rows)
    report = b.report(tokenizer=WordTokenizer(), max_length=8)
    assert isinstance(report, DataReport)
    stats = report.splits[0]
    assert stats.size == 61 and sum(stats.labels.values()) == 61
    assert stats.chars["min"] == 1 and stats.tokens is not None and stats.tokens["min"] == 3
    lengths = [len(r["text"].split()) + 2 for r in rows]
    assert stats.truncated == sum(n > 8 for n in lengths)
    assert stats.tokens["p95"] == pytest.approx(np.percentile(lengths, 95))
    text = " ".join(report.warnings)
    assert "tiny data set" in text and "imbalance" in text and "truncated" in text
    table = str(report)
    assert "split" in table and "tokens min/med/p95/max" in table and "WARNING" in table
    json.dumps(report.to_dict())
    with pytest.raises(ValueError, match="tokenizer"):
        b.report(max_length=8)


def test_splits_report_includes_leakage_and_sizes():
    b = DatasetBuilder.from_records(make_records(300))
    s = b.split(validation=0.1, test=0.1, stratify=True)
    report = s.report()
    assert [x.name for x in report.splits] == ["train", "validation", "test"]
    assert report["validation"].size == 30 and report.warnings == []
    leaky = Splits(s.train, s.validation, Records([*s.test, s.train[0]], name="test"))
    report = leaky.report()
    assert report.leakage["train/test"]["exact"] == 1
    assert any("leakage" in w for w in report.warnings)
    assert [x.name for x in b.split(validation=0, test=10).report().splits] == ["train", "test"]


def test_report_with_a_real_fast_tokenizer():
    from finetune_lib.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    b = DatasetBuilder.from_records(make_records(120))
    report = b.report(tokenizer=tok, max_length=16)
    expected = [len(ids) for ids in tok(b.records.texts)["input_ids"]]
    assert report.splits[0].tokens["max"] == max(expected)
    assert report.splits[0].truncated == sum(n > 16 for n in expected)


@pytest.mark.skipif(not AMAZON.exists(), reason="shared/data/amazon_cells_labelled.txt is not beside the repo")
def test_real_amazon_pipeline():
    s = (DatasetBuilder.from_file(AMAZON, text=0, label=1)
         .deduplicate()
         .split(validation=0.1, test=0.1, stratify=True, seed=0))
    assert not s.leakage()
    assert s.dedup_counts["exact"] == 10
    report = s.report()
    assert report.dropped == {"stray_header": 1}
    for stats in report.splits:
        assert abs(stats.labels[0] - stats.labels[1]) <= 2


def test_split_of_an_empty_builder_gives_kept_and_total_counts():
    from finetune_lib import DatasetBuilder
    from finetune_lib.data import DataError

    b = DatasetBuilder.from_records([{"text": f"t{i}", "label": i % 2} for i in range(20)])
    b = b.filter(lambda r: len(r["text"]) > 5, reason="too_short")
    with pytest.raises(DataError, match=r"0 records kept of 20 read \(dropped: too_short: 20\)"):
        b.split()
