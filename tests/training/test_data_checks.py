"""Data and metrics that cannot be right are refused before any step: texts that are not strings,
labels that are not class names or ids, metrics the task cannot feed; and validation records that
repeat training texts are reported."""

import logging

import pytest

from finetune_lib import DatasetBuilder, FineTuner
from finetune_lib.data.dedup import find_leakage
from finetune_lib.metrics import BLEU, Accuracy, ChrF, MetricSuite, Perplexity
from finetune_lib.training.loading import check_overlap

from .helpers import classification_records, generation_records, model_and_tokenizer

NAN = float("nan")


def tuner(task="classification", out=None, **kw):
    arch = {"classification": "bert", "causal_lm": "gpt2", "seq2seq": "t5"}[task]
    model, tok = model_and_tokenizer(arch, task, **({"num_labels": 2} if task == "classification" else {}))
    settings = {"max_steps": 1, "batch_size": 8, "progress": False, **kw}
    return FineTuner(model, task, tokenizer=tok, output_dir=out, **settings)


# ---- texts and labels of the wrong type ------------------------------------------------------------------------
@pytest.mark.parametrize("value,shown", [(None, "NoneType None"), (NAN, "float nan"), (["a", "b"], "list"),
                                         (3, "int 3"), (b"bytes", "bytes")])
def test_classification_text_must_be_a_string(tmp_path, value, shown):
    data = classification_records(16)
    data[5] = {"text": value, "label": "positive"}
    with pytest.raises(ValueError, match=rf"train data have the wrong type.*record 5: text is {shown}.*must be a "
                                         r"string.*'None', 'nan'"):
        tuner(out=tmp_path / "run").fit(data)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("label,shown", [(None, "NoneType None"), (NAN, "float nan"), ([1, 0], "list"),
                                         (0.5, "float 0.5")])
def test_classification_label_must_be_a_name_or_an_id(label, shown):
    data = [{"text": f"text {i}", "label": i % 2} for i in range(16)]
    data[3]["label"] = label
    with pytest.raises(ValueError, match=rf"record 3: label is {shown}.*class name \(str\) or id \(int\)"):
        tuner().fit(data)


def test_integral_float_and_bool_labels_still_pass():
    tuner().fit([{"text": f"text {i}", "label": float(i % 2)} for i in range(16)])
    tuner().fit([{"text": f"text {i}", "label": bool(i % 2)} for i in range(16)])


def test_validation_and_evaluation_data_are_checked_too():
    t = tuner()
    with pytest.raises(ValueError, match=r"validation data .*record 1: text is float nan"):
        t.fit(classification_records(16), [{"text": "fine", "label": "positive"}, {"text": NAN, "label": "negative"}])
    t.fit(classification_records(16))
    with pytest.raises(ValueError, match=r"evaluation data .*record 0: text is NoneType None"):
        t.evaluate([{"text": None, "label": "positive"}])


@pytest.mark.parametrize("task,key", [("seq2seq", "prompt"), ("seq2seq", "target"), ("causal_lm", "target")])
def test_generation_texts_must_be_strings(task, key):
    data = generation_records(16)
    data[2][key] = NAN
    with pytest.raises(ValueError, match=rf"record 2: {key} is float nan"):
        tuner(task).fit(data)


def test_a_missing_prompt_may_be_none_and_many_bad_records_are_counted():
    data = generation_records(16)
    data[0]["prompt"] = None  # no prompt: the whole target is learned
    tuner("seq2seq").fit(data)
    bad = [{"text": None, "label": "positive"} for _ in range(9)]
    with pytest.raises(ValueError, match=r"^9 value\(s\) .*record 4: text is NoneType None \.\.\."):
        tuner().fit(bad + classification_records(4))


def test_a_bare_jsonl_nan_is_not_a_text(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good phone", "label": 1}\n{"text": NaN, "label": 0}\n{"text": "bad", "label": NaN}\n'
                    '{"text": "fine", "label": 0}\n')
    builder = DatasetBuilder.from_file(path)
    assert builder.records.texts == ["good phone", "fine"]  # the NaN rows are dropped and counted, never "nan"
    assert builder.dropped == {"empty_text": 1, "empty_label": 1}


# ---- metrics the task cannot feed -------------------------------------------------------------------------------
@pytest.mark.parametrize("metrics,match", [
    (MetricSuite([BLEU()]), r"BLEU \('bleu'\) scores generated text, and the 'classification' task generates none"),
    (MetricSuite([Accuracy(), ChrF()]), r"ChrF \('chrf'\)"),
    (MetricSuite([Perplexity()]), r"Perplexity \('perplexity'\) runs on causal_lm and seq2seq only"),
    ([Accuracy(name="loss")], "named 'loss'"),
])
def test_metrics_the_task_cannot_run_fail_at_construction(metrics, match):
    with pytest.raises(ValueError, match=match):
        FineTuner("never-loaded", task="classification", metrics=metrics)


def test_metrics_that_fit_the_task_are_accepted_and_a_list_is_wrapped():
    assert FineTuner("never-loaded", task="seq2seq", metrics=MetricSuite([BLEU(), Perplexity()])).metrics.names == [
        "bleu", "perplexity"]
    assert isinstance(FineTuner("never-loaded", metrics=[Accuracy()]).metrics, MetricSuite)
    with pytest.raises(TypeError, match="metrics must be a MetricSuite"):
        FineTuner("never-loaded", metrics="accuracy")


# ---- validation records that repeat training texts --------------------------------------------------------------
def test_fit_warns_when_validation_repeats_training_texts(caplog):
    train = classification_records(32)
    val = [dict(train[0]), {"text": "  " + train[1]["text"].upper() + "!", "label": train[1]["label"]},
           {"text": "a text of its own, never in train", "label": "negative"}]
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        tuner().fit(train, val)
    warned = [r.getMessage() for r in caplog.records if "share their text" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("2 of the 3 validation records (66.7%) share their text with the training data "
                                "(1 exact, 1 after normalizing")
    assert "remove_leakage()" in warned[0] and "deduplicate()" in warned[0]


def test_no_warning_without_overlap(caplog):
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        found = check_overlap(classification_records(32), [{"text": "nothing like it", "label": "negative"}])
    assert found == {"train/validation": {"exact": 0, "normalized": 0, "near": 0, "examples": []}}
    assert not [r for r in caplog.records if "share their text" in r.getMessage()]
    assert check_overlap(classification_records(4), None) == {}


def test_overlap_counts_match_splits_leakage_and_large_data_is_checked_exactly(caplog):
    train = [{"prompt": "a b", "target": "c"}, {"prompt": "x", "target": "y"}]
    val = [{"prompt": "a b", "target": "d"}, {"prompt": "X", "target": "y!"}, {"prompt": "x", "target": "y"}]
    found = check_overlap(train, val)["train/validation"]
    assert found == {"exact": 1, "normalized": 1, "near": 0, "examples": ["X\x1fy!", "x\x1fy"]}
    assert found == find_leakage({"train": train, "validation": val}).pairs["train/validation"]
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        assert check_overlap(train, val, normalize_limit=5)["train/validation"]["normalized"] == 0
    assert "only exact matches were looked for" in caplog.text
