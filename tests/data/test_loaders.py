import gzip
import importlib.util
import json
import logging
from pathlib import Path

import pytest

from finetune_lib.data.builder import DatasetBuilder
from finetune_lib.data.loaders import DataError
from finetune_lib.data.records import Records

AMAZON = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "amazon_cells_labelled.txt"

ROWS = [
    {"review": "Great phone, love it", "sentiment": "pos", "user": "u1"},
    {"review": "Battery died in a day", "sentiment": "neg", "user": "u2"},
    {"review": "Works as described", "sentiment": "pos", "user": "u1"},
]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def expected(rows=ROWS):
    return [{"text": r["review"], "label": r["sentiment"], "user": r["user"]} for r in rows]


# --------------------------------------------------------------------------- formats


def test_jsonl(tmp_path):
    path = write(tmp_path / "reviews.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    b = DatasetBuilder.from_file(path, text="review", label="sentiment")
    assert list(b) == expected()
    assert b.name == "reviews"
    assert isinstance(b.records, Records) and b.records.name == "reviews"
    assert b.dropped == {"blank_line": 1}


def test_json_list(tmp_path):
    path = write(tmp_path / "reviews.json", json.dumps(ROWS))
    assert list(DatasetBuilder.from_file(path, text="review", label="sentiment")) == expected()


def test_csv_with_quotes_commas_and_newlines(tmp_path):
    text = 'review,sentiment,user\n"Great phone, love it",pos,u1\n"Battery ""died""\nin a day",neg,u2\n'
    b = DatasetBuilder.from_file(write(tmp_path / "r.csv", text), text="review", label="sentiment")
    assert b.records.texts == ["Great phone, love it", 'Battery "died"\nin a day']
    assert b.records.labels == ["pos", "neg"]


def test_csv_numeric_labels_become_int(tmp_path):
    b = DatasetBuilder.from_file(write(tmp_path / "r.csv", "text,label\nok,1\nbad,0\nfine, 1\n"))
    assert b.records.labels == [1, 0, 1]


def test_tsv_with_header(tmp_path):
    text = "review\tsentiment\tuser\n" + "".join(f"{r['review']}\t{r['sentiment']}\t{r['user']}\n" for r in ROWS)
    b = DatasetBuilder.from_file(write(tmp_path / "r.tsv", text), text="review", label="sentiment")
    assert list(b) == expected()


def test_headerless_tsv_by_index(tmp_path):
    text = 'He said "great" phone\t1\nterrible\t0\nok "sort of\t1\n'  # quotes are text in TSV
    for name in ("r.tsv", "r.txt"):
        b = DatasetBuilder.from_file(write(tmp_path / name, text), text=0, label=1)
        assert list(b) == [{"text": 'He said "great" phone', "label": 1}, {"text": "terrible", "label": 0},
                           {"text": 'ok "sort of', "label": 1}]
        assert b.dropped == {}


def test_headerless_tsv_guessed_without_mapping(tmp_path):
    b = DatasetBuilder.from_file(write(tmp_path / "r.txt", "good one\t1\nbad one\t0\n"))
    assert list(b) == [{"text": "good one", "label": 1}, {"text": "bad one", "label": 0}]


def test_headerless_extra_columns_kept(tmp_path):
    b = DatasetBuilder.from_file(write(tmp_path / "r.tsv", "a\t1\tx\nb\t0\ty\n"), text=0, label=1)
    assert b[0] == {"text": "a", "label": 1, "column_2": "x"}


def test_txt_lines(tmp_path):
    b = DatasetBuilder.from_file(write(tmp_path / "corpus.txt", "first line\r\n\nsecond line\n  \nthird\n"))
    assert b.records.texts == ["first line", "second line", "third"]
    assert b.dropped == {"blank_line": 2}
    assert b.columns == ["text"]


def test_txt_format_forces_lines(tmp_path):
    path = write(tmp_path / "code.txt", "def f():\n\treturn 1\n\tpass\n")
    assert DatasetBuilder.from_file(path, format="txt").records.texts == ["def f():", "\treturn 1", "\tpass"]
    assert DatasetBuilder.from_file(path, delimiter="\t", has_header=False, text=1).records.texts == ["return 1", "pass"]


def test_txt_blocks(tmp_path):
    text = "para one\ncontinues\n\n\npara two\n   \npara three\nend"
    b = DatasetBuilder.from_file(write(tmp_path / "corpus.txt", text), blocks=True)
    assert b.records.texts == ["para one\ncontinues", "para two", "para three\nend"]


def test_gzip(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in ROWS).encode()))
    assert list(DatasetBuilder.from_file(path, text="review", label="sentiment")) == expected()


def test_parquet(tmp_path):
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(ImportError, match=r"finetune_lib\[parquet\]"):
            DatasetBuilder.from_file(write(tmp_path / "r.parquet", "x"), text="review")
        pytest.skip("pyarrow is not installed")
    import pandas as pd

    path = tmp_path / "r.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    assert list(DatasetBuilder.from_file(path, text="review", label="sentiment")) == expected()


def test_pandas():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"review": ["a", "b", None, "d"], "y": [1, 0, 1, float("nan")]})
    b = DatasetBuilder.from_pandas(df, text="review", label="y")
    assert list(b) == [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    assert isinstance(b[0]["label"], int)
    assert b.dropped == {"empty_text": 1, "empty_label": 1}


def test_records_and_standard_keys():
    rows = [{"text": "a", "label": "x", "meta": 1}, {"text": "b", "label": "y", "meta": 2}]
    assert list(DatasetBuilder.from_records(rows)) == rows
    gen = DatasetBuilder.from_records([{"q": "2+2?", "a": "4"}, {"q": None, "a": "hello"}], prompt="q", target="a")
    assert list(gen) == [{"prompt": "2+2?", "target": "4"}, {"prompt": "", "target": "hello"}]


def test_hf_dataset_duck_typed():
    class FakeDataset:
        column_names = ["sentence", "label"]

        def __iter__(self):
            return iter([{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])

    b = DatasetBuilder.from_hf(FakeDataset(), text="sentence")
    assert list(b) == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]

    class FakeDict:
        column_names = {"train": ["text"], "test": ["text"]}

    with pytest.raises(TypeError, match=r"dataset\['train'\]"):
        DatasetBuilder.from_hf(FakeDict())


def test_hf_class_labels_come_in_as_names():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["positive", "negative", "neutral"]),  # not in sorted order
        "tags": datasets.Sequence(datasets.ClassLabel(names=["battery", "screen"])),
    })
    ds = datasets.Dataset.from_dict({"sentence": ["good", "bad", "meh", "?"], "label": [0, 1, 2, -1],
                                     "tags": [[0, 1], [1], [], [0]]}, features=features)
    b = DatasetBuilder.from_hf(ds, text="sentence")
    assert list(b) == [{"text": "good", "label": "positive", "tags": ["battery", "screen"]},
                       {"text": "bad", "label": "negative", "tags": ["screen"]},
                       {"text": "meh", "label": "neutral", "tags": []}]
    assert b.dropped == {"empty_label": 1}  # -1 is datasets' "no label"
    from finetune_lib.data.loaders import class_label_names

    assert class_label_names(ds) == {"label": ["positive", "negative", "neutral"], "tags": ["battery", "screen"]}


def test_hf_class_labels_reach_predict_as_names():
    datasets = pytest.importorskip("datasets")
    from finetune_lib import FineTuner, Preprocessor
    from finetune_lib.testing import tiny_model, tiny_tokenizer

    from ..training.helpers import classification_records

    records = classification_records(16)
    names = ["positive", "negative"]
    ds = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in records], "label": [names.index(r["label"]) for r in records]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}))
    tok = tiny_tokenizer(kind="encoder")
    tuner = FineTuner(tiny_model("bert", "classification", vocab_size=len(tok)), "classification", tokenizer=tok,
                      preprocessor=Preprocessor(labels=ds.features["label"].names), max_steps=1, batch_size=8,
                      progress=False, loggers=())
    tuner.fit(list(DatasetBuilder.from_hf(ds)))
    assert tuner.model.config.id2label == {0: "positive", 1: "negative"}  # the data set's own id order
    assert {p["label"] for p in tuner.predict(["great value", "broken charger"])} <= set(names)


# --------------------------------------------------------------------------- messy files


def test_stray_header_and_blank_lines(tmp_path, caplog):
    text = "Review\nnice phone\t1\n\nbroke fast\t0\n\n   \nlove it\t1\n"
    with caplog.at_level(logging.WARNING, logger="finetune_lib.data"):
        b = DatasetBuilder.from_file(write(tmp_path / "r.txt", text), text=0, label=1)
    assert b.records.texts == ["nice phone", "broke fast", "love it"]
    assert b.dropped == {"stray_header": 1, "blank_line": 3}
    assert "stray_header" in caplog.text and "r.txt:1" in caplog.text
    assert "stray_header 1" in str(b.report())


def test_wrong_field_count_dropped_and_counted(tmp_path):
    b = DatasetBuilder.from_file(write(tmp_path / "r.tsv", "a\t1\nb\t0\textra\nc\t1\n"), text=0, label=1)
    assert b.records.texts == ["a", "c"]
    assert b.dropped == {"wrong_field_count": 1}


def test_cp1252_file(tmp_path):
    path = write(tmp_path / "legacy.csv", "text,label\nplain,1\ncaf\u00e9 \u2019quoted\u2019,0\n", "cp1252")
    with pytest.raises(DataError) as info:
        DatasetBuilder.from_file(path)
    message = str(info.value)
    assert "legacy.csv" in message and "'utf-8'" in message
    assert "byte offset 22" in message and "line 3" in message
    assert 'encoding="cp1252"' in message.replace("'", '"')
    b = DatasetBuilder.from_file(path, encoding="cp1252")
    assert b.records.texts == ["plain", "caf\u00e9 \u2019quoted\u2019"]


def test_utf8_bom_is_silent(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhello,1\n")
    b = DatasetBuilder.from_file(path)
    assert b.columns == ["text", "label"] and b[0] == {"text": "hello", "label": 1}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "x"}).encode() + b"\n")
    assert list(DatasetBuilder.from_file(path, format="jsonl")) == [{"text": "x"}]


def test_missing_column_lists_available(tmp_path):
    path = write(tmp_path / "r.csv", "review,sentiment\nx,1\n")
    with pytest.raises(DataError) as info:
        DatasetBuilder.from_file(path, text="body", label="sentiment")
    assert "'body'" in str(info.value) and "['review', 'sentiment']" in str(info.value)
    with pytest.raises(DataError, match="no text column.*available columns: \\['review', 'sentiment'\\]"):
        DatasetBuilder.from_file(path)
    with pytest.raises(DataError, match="by position"):
        DatasetBuilder.from_file(write(tmp_path / "h.tsv", "x\t1\n"), text="text", has_header=False)
    with pytest.raises(DataError, match=r"\['text'\]"):
        DatasetBuilder.from_records([{"text": "a"}], label="label")


def test_mixed_label_types(tmp_path):
    lines = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": "positive"}]
    path = write(tmp_path / "mixed.jsonl", "\n".join(json.dumps(r) for r in lines))
    with pytest.raises(DataError) as info:
        DatasetBuilder.from_file(path)
    message = str(info.value)
    assert "mixes label types" in message and "mixed.jsonl:1" in message and "mixed.jsonl:3" in message
    assert "'positive'" in message and "'label'" in message
    with pytest.raises(DataError, match="mixes label types"):
        DatasetBuilder.from_file(write(tmp_path / "m.csv", "text,label\na,1\nb,good\n"))
    with pytest.raises(DataError, match="mixes label types"):
        DatasetBuilder.from_records([{"text": "a", "label": True}, {"text": "b", "label": 2}])
    # int and float ids are one numeric type
    assert DatasetBuilder.from_records([{"text": "a", "label": 1.0}, {"text": "b", "label": 2}]).records.labels == [1, 2]


def test_empty_values_dropped_or_strict(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\na,1\n  ,0\nc,\nd,1\n")
    b = DatasetBuilder.from_file(path)
    assert b.records.texts == ["a", "d"]
    assert b.dropped == {"empty_text": 1, "empty_label": 1}
    with pytest.raises(DataError, match=r"r.csv:3: empty value in column 'text'"):
        DatasetBuilder.from_file(path, strict=True)
    with pytest.raises(DataError, match="no records left"):
        DatasetBuilder.from_records([{"text": " "}])


def test_invalid_json_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b",}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        DatasetBuilder.from_file(path)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="format="):
        DatasetBuilder.from_file(write(tmp_path / "data.xyz", "a"))
    with pytest.raises(FileNotFoundError):
        DatasetBuilder.from_file(tmp_path / "nope.csv")


def test_non_text_value_error():
    with pytest.raises(DataError, match="record 1.*expected text"):
        DatasetBuilder.from_records([{"text": "a"}, {"text": ["b"]}])


# --------------------------------------------------------------------------- the real file


@pytest.mark.skipif(not AMAZON.exists(), reason="shared/data/amazon_cells_labelled.txt is not beside the repo")
def test_real_amazon_file_loads_as_it_is():
    for kwargs in ({"text": 0, "label": 1}, {}):
        b = DatasetBuilder.from_file(AMAZON, **kwargs)
        assert len(b) == 1000
        assert b.records.label_counts() == {0: 500, 1: 500}
        assert b.dropped == {"stray_header": 1}
        assert all(set(r) == {"text", "label"} and r["text"].strip() for r in b)


CHAT = [{"role": "user", "content": "where is my package"}, {"role": "assistant", "content": "it ships today"}]


def test_conversations_from_pandas_parquet_and_hf_like_sources(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"dialog": [CHAT, None], "topic": ["orders", "none"]})
    b = DatasetBuilder.from_pandas(df, messages="dialog")
    assert list(b) == [{"messages": CHAT, "topic": "orders"}] and b.dropped == {"empty_messages": 1}
    if importlib.util.find_spec("pyarrow") is not None:  # lists of structs come back as numpy arrays of dicts
        path = tmp_path / "chats.parquet"
        pd.DataFrame({"messages": [CHAT, CHAT[:1] + CHAT[1:]]}).to_parquet(path)
        assert [r["messages"] for r in DatasetBuilder.from_file(path)] == [CHAT, CHAT]

    class FakeDataset(list):
        column_names = ["messages", "prompt"]

    hf = DatasetBuilder.from_hf(FakeDataset([{"messages": CHAT, "prompt": "where is my package"}]))
    assert hf[0]["messages"] == CHAT  # a conversation's own prompt column is kept beside it
