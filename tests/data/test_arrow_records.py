"""ArrowRecords: the list-like contract over a datasets.Dataset (helper code relies on it)."""

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib.data.arrow_records import ArrowRecords  # noqa: E402

ROWS = [{"text": f"t{i}", "label": i % 3, "score": i / 2} for i in range(10)]


@pytest.fixture
def recs():
    return ArrowRecords(datasets.Dataset.from_list(ROWS), name="train")


def test_list_like(recs):
    assert len(recs) == 10 and bool(recs)
    assert list(recs) == ROWS
    assert recs[0] == ROWS[0] and recs[-1] == ROWS[-1]
    with pytest.raises(IndexError):
        recs[10]
    with pytest.raises(TypeError, match=r"column\('text'\)"):
        recs["text"]
    part = recs[2:5]
    assert isinstance(part, ArrowRecords) and part.name == "train" and list(part) == ROWS[2:5]
    assert list(recs[::-3]) == ROWS[::-3]
    assert recs.columns == ["text", "label", "score"]
    assert "ArrowRecords(name='train', n=10" in repr(recs)


def test_select_and_columns(recs):
    picked = recs.select([7, 1, 4], name="test")
    assert picked.name == "test" and list(picked) == [ROWS[7], ROWS[1], ROWS[4]]
    labels = picked.column("label")
    assert isinstance(labels, np.ndarray) and labels.tolist() == [1, 1, 1]
    assert picked.column("text") == ["t7", "t1", "t4"]
    assert picked.column("missing", default=0) == [0, 0, 0]
    assert picked.arrow_column("score").to_pylist() == [3.5, 0.5, 2.0]
    assert [len(b) for b in recs.iter_column("text", batch_size=4)] == [4, 4, 2]
    assert recs.labels == [r["label"] for r in ROWS]
    assert recs.label_counts() == {0: 4, 1: 3, 2: 3}
    assert recs.texts == [r["text"] for r in ROWS]


def test_nulls_come_back_as_lists_and_conversions():
    recs = ArrowRecords(datasets.Dataset.from_list([{"text": "a", "label": 1}, {"text": "b", "label": None}]))
    assert recs.column("label") == [1, None]
    assert recs.filter(lambda r: r["label"] is not None).column("text") == ["a"]
    assert recs.to_records() == [{"text": "a", "label": 1}, {"text": "b", "label": None}]
    assert recs.copy().dataset is recs.dataset


def test_refuses_a_dataset_dict():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    with pytest.raises(TypeError, match=r"dataset\['train'\]"):
        ArrowRecords(dd)
