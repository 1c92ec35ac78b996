"""Token classification data: spans to tags, tag schemes, record checks, loading, and sub-token alignment."""

from __future__ import annotations

import json

import pytest

from finetune_lib import DatasetBuilder, Preprocessor
from finetune_lib.data.loaders import DataError
from finetune_lib.data.token_labels import (
    align_labels,
    check_tagged_records,
    normalize_tagged,
    spans_to_tags,
    split_words,
    tag_names,
    to_iob2,
)
from finetune_lib.testing import tiny_wordpiece_tokenizer

NER = [
    {"tokens": ["Angela", "Merkel", "visited", "Paris", "."], "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]},
    {"tokens": ["Zyxwvut", "Qrstuv", "met", "Olaf"], "tags": ["B-ORG", "I-ORG", "O", "B-PER"]},
    {"tokens": ["Siemens", "is", "in", "Berlin"], "tags": ["B-ORG", "O", "O", "B-LOC"]},
]


def test_split_words_and_spans_to_tags():
    text = "Dr. Angela Merkel's trip to Paris, France."
    assert [w for w, _, _ in split_words(text)] == ["Dr", ".", "Angela", "Merkel", "'", "s", "trip", "to", "Paris",
                                                  ",", "France", "."]
    words, tags = spans_to_tags(text, [{"start": 4, "end": 17, "label": "PER"},
                                       {"start": 28, "end": 33, "label": "LOC"}, {"start": 35, "end": 41, "label": "LOC"}])
    assert list(zip(words, tags))[2:4] == [("Angela", "B-PER"), ("Merkel", "I-PER")]
    assert tags[8] == "B-LOC" and tags[9] == "O" and tags[10] == "B-LOC"
    assert tags.count("O") == len(tags) - 4
    # a span that cuts a word tags the whole word
    assert spans_to_tags("Berlinale", [{"start": 0, "end": 6, "label": "LOC"}]) == (["Berlinale"], ["B-LOC"])
    row = normalize_tagged({"text": text, "spans": []})
    assert row["tags"] == ["O"] * len(row["tokens"]) and row["word_offsets"][2] == [4, 10]


@pytest.mark.parametrize("tags, iob2", [
    (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),  # IOB1
    (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),  # IOB1: B- between two adjacent entities
    (["B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG"],
     ["B-PER", "I-PER", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]),  # BIOES
    (["B-PER", "I-LOC"], ["B-PER", "B-LOC"]),  # a change of type starts an entity
])
def test_to_iob2(tags, iob2):
    assert to_iob2(tags) == iob2


def test_tag_names_put_o_first_and_both_prefixes_of_each_type():
    assert tag_names([normalize_tagged(r) for r in NER]) == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER",
                                                              "I-PER"]


@pytest.mark.parametrize("record, message", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags"),
    ({"tokens": ["a"], "tags": ["I-"]}, "no entity type"),
    ({"tokens": ["a"], "tags": ["PER"]}, "neither 'O' nor a B-/I-/E-/S- tag"),
    ({"tokens": [], "tags": []}, "non-empty list of words"),
    ({"tokens": ["a", " "], "tags": ["O", "O"]}, r"tokens\[1\]"),
    ({"tokens": ["a"]}, "no tags"),
    ({"text": "Hi Bob", "spans": [{"start": 3, "end": 9, "label": "PER"}]}, "out of range"),
    ({"text": "Hi Bob", "spans": [{"start": 0, "end": 4, "label": "X"}, {"start": 3, "end": 6, "label": "PER"}]},
     "overlap"),
    ({"text": "Hi Bob", "spans": [{"start": 3, "end": 6, "label": "B-PER"}]}, "no B-/I- prefix"),
    ({"text": "Hi Bob", "spans": [{"start": 3, "end": 6}]}, "needs the keys"),
    ({"label": 1}, "neither tokens"),
])
def test_bad_records_are_refused_with_the_fix(record, message):
    with pytest.raises(ValueError, match=message):
        check_tagged_records([record], "train")


def test_align_labels_first_subtoken_and_all_subtokens():
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2}
    word_ids = [None, 0, 0, 0, 1, None]
    assert align_labels(word_ids, ["B-PER", "O"], label2id) == [-100, 1, -100, -100, 0, -100]
    assert align_labels(word_ids, ["B-PER", "O"], label2id, label_all_subtokens=True) == [-100, 1, 2, 2, 0, -100]


@pytest.mark.parametrize("all_subtokens", [False, True])
@pytest.mark.parametrize("max_length", [None, 6])
def test_encode_aligns_every_token(all_subtokens, max_length):
    tok = tiny_wordpiece_tokenizer()
    pre = Preprocessor(max_length=max_length, label_all_subtokens=all_subtokens).setup(tok, "token_classification",
                                                                                        NER)
    assert pre.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    features = pre.encode(NER, "train")
    enc = tok([r["tokens"] for r in NER], is_split_into_words=True, truncation=True, max_length=pre.max_length)
    split_words = 0
    for j, (feature, record) in enumerate(zip(features, NER)):
        word_ids = enc.word_ids(j)
        assert feature["input_ids"] == enc["input_ids"][j]
        assert feature["word_ids"] == [-1 if w is None else w for w in word_ids]
        seen: set[int] = set()
        for position, (w, label) in enumerate(zip(word_ids, feature["labels"])):  # token by token
            if w is None:
                assert label == -100, position
            elif w not in seen:
                assert pre.label_names[label] == record["tags"][w]
                seen.add(w)
            elif all_subtokens:
                split_words += 1
                assert pre.label_names[label] == record["tags"][w].replace("B-", "I-")
            else:
                split_words += 1
                assert label == -100
    assert split_words  # some words were split into pieces (the unknown names)
    cut = sum(max(f["word_ids"]) + 1 < len(r["tokens"]) for f, r in zip(features, NER))  # words dropped at the end
    assert pre.stats["train"].truncated == cut and (cut > 0) == (max_length is not None)


def test_encode_truncation_strict_and_unknown_tags():
    tok = tiny_wordpiece_tokenizer()
    with pytest.raises(ValueError, match="strict=True"):
        Preprocessor(max_length=4, strict=True).setup(tok, "token_classification", NER).encode(NER)
    pre = Preprocessor().setup(tok, "token_classification", NER[:1])
    with pytest.raises(ValueError, match="never seen in the training data"):
        pre.encode(NER[1:2], "validation")
    with pytest.raises(ValueError, match="lacks the tags"):
        Preprocessor(labels=["O", "B-PER"]).setup(tok, "token_classification", NER)


def test_builder_loads_tokens_spans_jsonl_and_csv(tmp_path):
    b = DatasetBuilder.from_records(NER * 2 + [{"tokens": [], "tags": []}])
    assert len(b) == 6 and b.dropped == {"empty_tokens": 1}
    assert len(b.deduplicate()) == 3  # duplicates found on the words
    splits = DatasetBuilder.from_records(NER * 4).split(validation=2, test=2, seed=0)
    assert splits.sizes == {"train": 8, "validation": 2, "test": 2}
    with pytest.raises(DataError, match="tag per word"):
        DatasetBuilder.from_records(NER * 4).split(validation=2, test=2, stratify=True)
    path = tmp_path / "ner.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in NER) + "\n" + json.dumps(
        {"text": "Olaf met Angela.", "spans": [{"start": 0, "end": 4, "label": "PER"}]}) + "\n")
    loaded = DatasetBuilder.from_file(path)
    assert loaded.columns == ["tokens", "tags", "text", "spans"] and len(loaded) == 4
    csv = tmp_path / "ner.csv"
    csv.write_text('words,ner,count\n"[""Olaf"", ""met""]","[""B-PER"", ""O""]",2\n')
    rows = DatasetBuilder.from_file(csv, tokens="words", tags="ner")
    assert rows[0]["tokens"] == ["Olaf", "met"] and rows[0]["tags"] == ["B-PER", "O"] and rows[0]["count"] == "2"
    # a column called "tokens" that holds numbers is not read as words
    plain = DatasetBuilder.from_records([{"text": "a b", "label": "x", "tokens": 2}])
    assert plain[0] == {"text": "a b", "label": "x", "tokens": 2}


@pytest.mark.parametrize("record, message", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags"),
    ({"text": "Hi Bob", "spans": [{"start": 3, "end": 60, "label": "PER"}]}, "out of range"),
    ({"tokens": "a b", "tags": ["O"]}, "holds str"),
])
def test_builder_refuses_malformed_token_records(record, message):
    with pytest.raises(DataError, match=message):
        DatasetBuilder.from_records([record], **({"tokens": "tokens"} if "tokens" in record else {}))
