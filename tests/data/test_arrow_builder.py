"""DatasetBuilder on Arrow (from_hf): the same records, dedup counts, splits and leakage as the list path,
and clear errors for bad sources."""

import json
import random
import sys

import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib.data import DatasetBuilder  # noqa: E402
from finetune_lib.data.arrow_records import ArrowRecords  # noqa: E402
from finetune_lib.data.loaders import DataError  # noqa: E402

WORDS = "good bad phone battery screen great awful ok fine broken".split()


def _rows(n=1500, seed=0, multilabel=False):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.2:
            text = text.upper() + "!"  # a normalized duplicate
        label = sorted(set(rng.sample(["a", "b", "c"], rng.randint(1, 2)))) if multilabel else rng.choice(["pos", "neg", "neu"])
        rows.append({"text": text, "label": label, "group": f"g{rng.randint(0, 150)}", "id": i})
    return rows


def _both(rows, **kw):
    listed = DatasetBuilder.from_records(rows, **kw)
    arrow = DatasetBuilder.from_hf(datasets.Dataset.from_list(rows), **kw)
    assert isinstance(arrow.records, ArrowRecords) and not isinstance(listed.records, ArrowRecords)
    return listed, arrow


def _same_splits(a, b):
    for name in ("train", "validation", "test"):
        assert type(b[name]) is ArrowRecords
        assert list(a[name]) == list(b[name]), name
    assert a.sizes == b.sizes and a.dropped == b.dropped and a.dedup_counts == b.dedup_counts


@pytest.mark.parametrize("normalized", [True, False])
def test_deduplicate_equals_the_list_path(normalized):
    a, b = _both(_rows())
    a.deduplicate(normalized=normalized)
    b.deduplicate(normalized=normalized)
    assert a.dedup_counts == b.dedup_counts and a.dedup_counts["exact"] > 100
    assert a.dedup_counts["label_conflicts"] > 0  # majority labels are applied the same way
    assert list(a) == list(b)
    assert isinstance(b.records, ArrowRecords)


def test_near_deduplicate_equals_the_list_path():
    a, b = _both(_rows(400))
    a.deduplicate(near=True, threshold=0.5)
    b.deduplicate(near=True, threshold=0.5)
    assert a.dedup_counts == b.dedup_counts and a.dedup_counts["near"] > 0
    assert list(a) == list(b)


@pytest.mark.parametrize("kw", [{}, {"stratify": True}, {"stratify": True, "test": 0}, {"group": "group"},
                                {"validation": 50, "test": 0.2, "seed": 7}])
def test_splits_equal_the_list_path(kw):
    a, b = _both(_rows())
    kw = {"seed": 3, **kw}
    sa, sb = a.deduplicate().split(**kw), b.deduplicate().split(**kw)
    _same_splits(sa, sb)
    if "group" in kw:
        groups = [set(sb[n].column("group")) for n in ("train", "validation", "test")]
        assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_multilabel_stratified_split_equals_the_list_path():
    a, b = _both(_rows(300, multilabel=True))
    _same_splits(a.split(stratify=True, seed=1), b.split(stratify=True, seed=1))


def test_leakage_and_remove_leakage_equal_the_list_path():
    a, b = _both(_rows(800))
    sa, sb = a.split(seed=2), b.split(seed=2)  # no dedup: duplicates leak between splits
    ra, rb = sa.leakage(), sb.leakage()
    assert ra.to_dict() == rb.to_dict() and rb.pairs["train/test"]["exact"] > 0
    assert rb.pairs["train/test"]["normalized"] > 0
    assert sa.leakage(near=True, threshold=0.6).to_dict() == sb.leakage(near=True, threshold=0.6).to_dict()
    ca, cb = sa.remove_leakage(), sb.remove_leakage()
    _same_splits(ca, cb)
    assert not cb.leakage() and cb.dropped["leakage_test"] > 0
    assert sb.report().leakage == sa.report().leakage


def test_validation_drops_and_types_like_the_list_path():
    rows = [{"review": "fine", "y": 1.0}, {"review": "  ", "y": 0.0}, {"review": None, "y": 1.0},
            {"review": "ok", "y": float("nan")}, {"review": "meh", "y": None}, {"review": "good", "y": 0.0}]
    a, b = _both(rows, text="review", label="y")
    assert list(a) == list(b) == [{"text": "fine", "label": 1}, {"text": "good", "label": 0}]
    assert isinstance(b[0]["label"], int)
    assert a.dropped == b.dropped == {"empty_text": 2, "empty_label": 2}
    gen = [{"q": "2+2?", "a": "4"}, {"q": None, "a": "hello"}, {"q": "x", "a": " "}]
    a, b = _both(gen, prompt="q", target="a")
    assert list(a) == list(b) == [{"prompt": "2+2?", "target": "4"}, {"prompt": "", "target": "hello"}]
    assert a.dropped == b.dropped == {"empty_target": 1}
    _same_splits(a.deduplicate().split(validation=1, test=0), b.deduplicate().split(validation=1, test=0))
    with pytest.raises(DataError, match=r"row 1: empty value in column 'review'"):
        DatasetBuilder.from_hf(datasets.Dataset.from_list(rows), text="review", label="y", strict=True)


def test_class_labels_and_lists_of_them_become_names():
    features = datasets.Features({
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["positive", "negative", "neutral"]),
        "topics": datasets.Sequence(datasets.ClassLabel(names=["battery", "screen"])),
    })
    ds = datasets.Dataset.from_dict({"sentence": ["good", "bad", "meh", "?"], "label": [0, 1, 2, -1],
                                     "topics": [[0, 1], [1], [], [0]]}, features=features)
    b = DatasetBuilder.from_hf(ds, text="sentence")
    assert isinstance(b.records, ArrowRecords)
    assert list(b) == list(DatasetBuilder.from_hf(ds, text="sentence", backend="list")) == [
        {"text": "good", "label": "positive", "topics": ["battery", "screen"]},
        {"text": "bad", "label": "negative", "topics": ["screen"]},
        {"text": "meh", "label": "neutral", "topics": []}]
    assert b.dropped == {"empty_label": 1}
    multi = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [[0], [0, 1]]}, features=datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.Sequence(datasets.ClassLabel(names=["x", "y"]))}))
    assert DatasetBuilder.from_hf(multi).records.column("label") == [["x"], ["x", "y"]]


def test_sources_dict_folder_and_files(tmp_path):
    rows = _rows(60)
    ds = datasets.Dataset.from_list(rows)
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(5))})
    with pytest.raises(TypeError, match=r"splits \['train', 'test'\].*split='train'"):
        DatasetBuilder.from_hf(dd)
    with pytest.raises(DataError, match=r"no split 'dev'.*\['train', 'test'\]"):
        DatasetBuilder.from_hf(dd, split="dev")
    assert len(DatasetBuilder.from_hf(dd, split="test")) == 5
    ds.save_to_disk(tmp_path / "saved")
    dd.save_to_disk(tmp_path / "saved_dict")
    assert list(DatasetBuilder.from_hf(tmp_path / "saved")) == rows
    assert len(DatasetBuilder.from_hf(str(tmp_path / "saved_dict"), split="test")) == 5
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds.to_csv(tmp_path / "r.csv")
    ds.to_parquet(tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.csv", "r.parquet"):
        b = DatasetBuilder.from_hf(tmp_path / name)
        assert isinstance(b.records, ArrowRecords) and b.records.column("text") == [r["text"] for r in rows], name


def test_bad_sources_say_how_to_fix(tmp_path, monkeypatch):
    datasets.Dataset.from_list([{"review": "a", "stars": 1}]).save_to_disk(tmp_path / "saved")
    with pytest.raises(DataError, match=r"column 'text' \(for text=\) not found; available columns: \['review', 'stars'\]"):
        DatasetBuilder.from_hf(tmp_path / "saved", text="text")
    with pytest.raises(DataError, match=r"no text column.*\['review', 'stars'\]"):
        DatasetBuilder.from_hf(tmp_path / "saved")
    assert DatasetBuilder.from_hf(tmp_path / "saved", text="review", streaming=True).streaming  # read as a stream
    with pytest.raises(DataError, match="no such file"):
        DatasetBuilder.from_hf(str(tmp_path / "missing.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'someone/reviews' from the Hugging Face hub.*HF_HUB_OFFLINE"):
        DatasetBuilder.from_hf("someone/reviews", split="train")
    with pytest.raises(ValueError, match="backend='fast'"):
        DatasetBuilder.from_hf(tmp_path / "saved", text="review", backend="fast")
    with pytest.raises(TypeError, match="needs a datasets.Dataset"):
        DatasetBuilder.from_hf([{"text": "a"}], backend="arrow")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"finetune_lib\[hf\]"):
        DatasetBuilder.from_hf(tmp_path / "saved", text="review")


def test_conversations_take_the_list_path():
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    b = DatasetBuilder.from_hf(datasets.Dataset.from_list([{"messages": chat}]))
    assert not isinstance(b.records, ArrowRecords) and b[0]["messages"] == chat
    with pytest.raises(DataError, match="backend='list'"):
        DatasetBuilder.from_hf(datasets.Dataset.from_list([{"messages": chat}]), backend="arrow")
