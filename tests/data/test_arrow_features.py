"""Arrow-backed encoding gives the list path's features, row by row, for every kind of record."""

from __future__ import annotations

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib import Preprocessor  # noqa: E402
from finetune_lib.data.arrow_features import ArrowFeatures  # noqa: E402
from finetune_lib.data.collate import LengthGroupedBatches, feature_lengths, gather  # noqa: E402
from finetune_lib.testing import sample_texts, tiny_chat_tokenizer, tiny_tokenizer  # noqa: E402

from ..training.helpers import classification_records, generation_records  # noqa: E402

CONVERSATIONS = [{"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": f"Say {t}"},
                               {"role": "assistant", "content": t},
                               {"role": "user", "content": "Again"},
                               {"role": "assistant", "content": t.upper()}]}
                 for t in sample_texts(40, seed=3, max_words=8)]


def _both(pre_kw, task, records, tok, split="train"):
    """(list features, Arrow features) of the same records with two equal Preprocessors."""
    out = []
    for arrow in (False, True):
        pre = Preprocessor(cache_dir=False, **pre_kw).setup(tok, task, records)
        data = datasets.Dataset.from_list(records) if arrow else records
        out.append((pre.encode(data, split), pre))
    return out


def _assert_same(listed, arrowed):
    assert isinstance(arrowed, ArrowFeatures)
    assert len(listed) == len(arrowed)
    for i, f in enumerate(listed):
        assert arrowed[i] == f, i
    assert list(arrowed) == listed
    assert arrowed.take([3, 0, 3]) == [listed[3], listed[0], listed[3]]
    assert arrowed[-1] == listed[-1]
    assert arrowed[2:5] == listed[2:5]


@pytest.mark.parametrize("task,records,kind", [
    ("classification", classification_records(60), "encoder"),
    ("causal_lm", generation_records(60), "decoder"),
    ("causal_lm", [{"text": t} for t in sample_texts(50, seed=1)], "decoder"),
    ("seq2seq", generation_records(30), "seq2seq"),
    ("regression", [{"text": t, "label": i / 7} for i, t in enumerate(sample_texts(30, seed=2))], "encoder"),
    ("multilabel_classification", [{"text": t, "label": ["a", "b"][: 1 + i % 2]}
                                   for i, t in enumerate(sample_texts(30, seed=2))], "encoder"),
])
def test_arrow_features_equal_the_list_path(task, records, kind):
    tok = tiny_tokenizer(kind=kind)
    (listed, pre), (arrowed, pre2) = _both({"max_length": 12}, task, records, tok)  # some are truncated
    _assert_same(listed, arrowed)
    assert pre.stats["train"] == pre2.stats["train"]
    assert pre.stats["train"].truncated > 0
    np.testing.assert_array_equal(arrowed.lengths(), [pre.length(f) for f in listed])
    assert arrowed.max_token_id() == max(max(f["input_ids"]) for f in listed)
    assert arrowed.has("labels")


def test_conversations_equal_the_list_path():
    tok = tiny_chat_tokenizer()
    (listed, pre), (arrowed, pre2) = _both({"max_length": 48}, "causal_lm", CONVERSATIONS, tok)
    _assert_same(listed, arrowed)
    assert pre.stats["train"] == pre2.stats["train"]
    # the masked assistant turns are stored as a few spans, not a copy of the labels
    assert "label_spans" in arrowed.table.schema.names and "labels" not in arrowed.table.schema.names


def test_ids_are_two_bytes_when_the_vocabulary_fits_and_the_mask_is_not_stored():
    tok = tiny_tokenizer(kind="encoder")
    records = classification_records(200)
    (_, _), (arrowed, _) = _both({}, "classification", records, tok)
    assert str(arrowed.table.schema.field("input_ids").type) == "list<item: uint16>"
    assert "attention_mask" not in arrowed.table.schema.names
    tokens = int(arrowed.lengths().sum())
    assert arrowed.nbytes / tokens < 4


def test_records_without_labels_read_back_without_labels():
    tok = tiny_tokenizer(kind="encoder")
    records = classification_records(20)
    pre = Preprocessor(cache_dir=False).setup(tok, "classification", records)
    bare = [{"text": r["text"]} for r in records]
    arrowed = pre.encode(datasets.Dataset.from_list(bare), "predict")
    assert arrowed[0] == pre.encode(bare, "predict")[0] and "labels" not in arrowed[0]
    assert not arrowed.has("labels")


def test_helpers_and_length_grouping_work_on_arrow_features():
    tok = tiny_tokenizer(kind="encoder")
    records = classification_records(64)
    (listed, pre), (arrowed, _) = _both({}, "classification", records, tok)
    lengths = feature_lengths(pre, arrowed)
    assert isinstance(lengths, np.ndarray)
    assert list(lengths) == feature_lengths(pre, listed)
    a = LengthGroupedBatches(lengths, 4, seed=3).epoch(1)
    b = LengthGroupedBatches([pre.length(f) for f in listed], 4, seed=3).epoch(1)
    assert a == b
    assert gather(arrowed, a[0]) == gather(listed, a[0])
    assert pre.collate(gather(arrowed, a[0])).keys() == pre.collate(gather(listed, a[0])).keys()


def test_packing_works_on_arrow_features():
    tok = tiny_tokenizer(kind="decoder")
    records = generation_records(40)
    (listed, _), (arrowed, _) = _both({"pack": True, "max_length": 64}, "causal_lm", records, tok)
    assert arrowed == listed


def test_num_proc_gives_the_same_features(tmp_path, monkeypatch):
    from finetune_lib.data import arrow_encode

    monkeypatch.setattr(arrow_encode, "MIN_ROWS_PER_PROCESS", 10)
    monkeypatch.setattr(arrow_encode, "CHUNK", 16)
    tok = tiny_tokenizer(kind="encoder")
    records = classification_records(100)
    ds = datasets.Dataset.from_list(records)
    one = Preprocessor(cache_dir=False, max_length=10).setup(tok, "classification", records)
    two = Preprocessor(cache_dir=False, max_length=10, num_proc=2).setup(tok, "classification", records)
    a, b = one.encode(ds), two.encode(ds)
    assert list(a) == list(b) == one.encode(records)
    assert one.stats["train"] == two.stats["train"]
    assert b.table.num_rows == 100


def test_arrow_records_encode_like_a_dataset():
    from finetune_lib.data.arrow_records import ArrowRecords

    tok = tiny_tokenizer(kind="encoder")
    records = classification_records(30)
    pre = Preprocessor(cache_dir=False).setup(tok, "classification", ArrowRecords(datasets.Dataset.from_list(records)))
    wrapped = pre.encode(ArrowRecords(datasets.Dataset.from_list(records), name="train"))
    assert isinstance(wrapped, ArrowFeatures) and list(wrapped) == pre.encode(records)
    # a selection of rows is encoded as selected
    picked = ArrowRecords(datasets.Dataset.from_list(records)).select([5, 2, 9])
    assert list(pre.encode(picked)) == pre.encode([records[5], records[2], records[9]])
