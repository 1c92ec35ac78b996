"""Column-wise reads of Arrow-backed records give what the row-by-row list path gives: the data report,
the distinct labels and their counts, and a column in row order under a selection."""

from __future__ import annotations

import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib.data.arrow_data import arrow_column, distinct_label_records, label_counts  # noqa: E402
from finetune_lib.data.arrow_records import ArrowRecords  # noqa: E402
from finetune_lib.data.report import build_report  # noqa: E402
from finetune_lib.testing import tiny_wordpiece_tokenizer  # noqa: E402

CASES = [
    [{"text": "héllo wörld", "label": "a"}, {"text": "x", "label": "b"}, {"text": "yy zz", "label": "a"},
     {"text": "  ", "label": None}],
    [{"text": "a b", "label": 1.0}, {"text": "c", "label": 2.5}, {"text": "d", "label": 1.0}],  # regression skipped
    [{"text": "a b", "label": ["x", "y"]}, {"text": "c", "label": ["y"]}],  # multi-label: each label counted
    [{"text": "no labels here"}, {"text": "none"}],
]


@pytest.mark.parametrize("records", CASES)
def test_report_of_arrow_records_equals_the_list_report(records):
    ds = datasets.Dataset.from_list(records)
    listed = build_report({"train": records, "validation": records[:2]}).to_dict()
    arrowed = build_report({"train": ArrowRecords(ds), "validation": ArrowRecords(ds).select([0, 1])}).to_dict()
    assert arrowed == listed
    assert build_report({"train": ds}).to_dict()["splits"] == listed["splits"][:1]


def test_report_with_a_tokenizer_counts_the_same_tokens():
    records = CASES[0] * 3
    tok = tiny_wordpiece_tokenizer()
    ds = datasets.Dataset.from_list(records)
    assert build_report({"train": ArrowRecords(ds)}, tok, 3).to_dict() == build_report({"train": records}, tok, 3).to_dict()


def test_label_counts_follow_a_selection_and_flatten_lists():
    ds = datasets.Dataset.from_list([{"text": str(i), "label": "abc"[i % 3]} for i in range(10)]).select([9, 0, 3, 1])
    assert arrow_column(ds, "label").to_pylist() == ["a", "a", "a", "b"]
    assert label_counts(ds) == (["a", "b"], [3, 1])
    assert distinct_label_records(ArrowRecords(ds)) == [{"label": "a"}, {"label": "b"}]
    multi = datasets.Dataset.from_list([{"text": "t", "label": ["x", "y"]}, {"text": "u", "label": ["y"]}])
    assert label_counts(multi) == (["x", "y"], [1, 2])
    with pytest.raises(KeyError, match="no column 'nope'"):
        arrow_column(ds, "nope")


def test_majority_labels_are_set_on_a_table_over_several_files(tmp_path):
    from finetune_lib.data import DatasetBuilder

    rows = [{"text": "Good phone", "label": "pos", "g": 1}, {"text": "good phone!", "label": "neg", "g": 2},
            {"text": "GOOD PHONE", "label": "neg", "g": 3}, {"text": "bad case", "label": "neg", "g": 4}]
    for k, part in enumerate((rows[:2], rows[2:])):
        datasets.Dataset.from_list(part).save_to_disk(str(tmp_path / f"p{k}"))
    ds = datasets.concatenate_datasets([datasets.load_from_disk(str(tmp_path / f"p{k}")) for k in range(2)])
    assert type(ds.data).__name__ == "ConcatenationTable"  # datasets cannot set_column on it
    arrowed = DatasetBuilder.from_hf(ds, text="text", label="label").deduplicate()
    listed = DatasetBuilder.from_records(rows, text="text", label="label").deduplicate()
    assert list(arrowed) == list(listed) and arrowed.dedup_counts == listed.dedup_counts
    assert arrowed.records.dataset.cache_files  # still read from the files
