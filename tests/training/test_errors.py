"""User errors are caught before any training or writing, with a message that says the fix."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from finetune_lib import FineTuner, Preprocessor
from finetune_lib.testing import sample_texts, save_tiny_pretrained, tiny_model, tiny_tokenizer

from .helpers import classification_records, model_and_tokenizer


def tuner(tmp_path=None, **kw):
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    settings = {"max_steps": 2, "batch_size": 8, "progress": False, **kw}
    return FineTuner(model, "classification", tokenizer=tok, output_dir=tmp_path, **settings)


def test_unknown_task():
    with pytest.raises(ValueError, match="Unknown task 'classify'.*classification, causal_lm, seq2seq"):
        FineTuner("whatever", task="classify")


def test_unknown_setting_and_bad_values():
    with pytest.raises(TypeError, match="learnig_rate"):
        FineTuner("x", learnig_rate=1e-3)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        FineTuner("x", batch_size=0)
    with pytest.raises(ValueError, match="multiple of gradient_accumulation"):
        FineTuner("x", batch_size=10, gradient_accumulation=4)


def test_missing_label_column_lists_keys(tmp_path):
    t = tuner(tmp_path / "run")
    with pytest.raises(ValueError, match=r"no \['label'\].*\['sentiment', 'text'\]"):
        t.fit([{"text": "a", "sentiment": 1}])
    assert not (tmp_path / "run").exists()  # nothing written


def test_empty_training_set(tmp_path):
    with pytest.raises(ValueError, match="train split is empty"):
        tuner(tmp_path / "run").fit([])
    assert not (tmp_path / "run").exists()


def test_output_dir_with_another_run(tmp_path):
    tuner(tmp_path / "run").fit(classification_records(16))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        tuner(tmp_path / "run").fit(classification_records(16))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(before + ["notes.txt"])
    tuner(tmp_path / "run", overwrite=True).fit(classification_records(16))
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # never touches the user's files


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        tuner(tmp_path / "run").fit(classification_records(16), resume=True)


def test_unseen_label_in_validation():
    val = [{"text": "great", "label": "neutral"}]
    with pytest.raises(ValueError, match="'neutral'.*never seen in the training data"):
        tuner().fit(classification_records(16), val)


def test_mixed_label_types():
    data = [{"text": "a", "label": 1}, {"text": "b", "label": "pos"}]
    with pytest.raises(ValueError, match="mixed types"):
        tuner().fit(data)


def test_tokenizer_from_another_model():
    from finetune_lib.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer(vocab_size=400, kind="encoder")
    model = tiny_model("bert", "classification", vocab_size=50, num_labels=2)
    t = FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="embedding table has 50 rows"):
        t.fit(classification_records(16))


def test_one_based_labels_are_caught_on_the_cpu_with_the_bad_values():
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    t = FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False)
    data = [{"text": "great phone", "label": 1}, {"text": "slow delivery", "label": 2}] * 4
    with pytest.raises(ValueError, match=r"\{1, 2\}: they look 1-based.*subtract 1.*Preprocessor\(labels=\[1, 2\]\)"):
        t.fit(data)
    # the values kept as ids on purpose (labels=[0, 1, 2]) do not fit a 2-label head: 2 is listed
    t = FineTuner(model, "classification", tokenizer=tok, preprocessor=Preprocessor(labels=[0, 1, 2]),
                  max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"head for 2 labels.*out of range for this head: \[2\].*look 1-based"):
        t.fit(data)


# ---- case 3: integer labels are ids 0..K-1; fixed heads must fit the labels ------------------------
def base_folder(tmp_path, arch="bert"):
    return save_tiny_pretrained(tmp_path / f"base-{arch}", arch=arch, task="classification")


@pytest.mark.parametrize("values,listed,why", [
    ([1, 2, 3], r"\{1, 2, 3\}", r"1-based \(1\.\.3\).*subtract 1"),
    ([0, 2, 5], r"\{0, 2, 5\}", r"ids \[1, 3, 4\] never occur.*labels=list\(range\(6\)\)"),
    ([-1, 0, 1], r"\{-1, 0, 1\}", r"negative values \[-1\]"),
])
def test_integer_labels_not_0_to_k_fail_before_the_model_loads(tmp_path, values, listed, why):
    data = [{"text": t, "label": values[i % len(values)]} for i, t in enumerate(sample_texts(12))]
    t = FineTuner(str(base_folder(tmp_path)), "classification", max_steps=1, progress=False,
                  output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"must be exactly 0\.\.K-1.*" + listed + ": .*" + why) as error:
        t.fit(data)
    assert f"Preprocessor(labels={values})" in str(error.value)  # the values found, and how to use them as names
    assert t.model is None  # no head of len(range(max + 1)) classes was built
    assert not (tmp_path / "run").exists()


def test_integer_labels_given_as_names_train_end_to_end(tmp_path):
    data = [{"text": t, "label": 1 + i % 3} for i, t in enumerate(sample_texts(24))]  # 1-based
    t = FineTuner(str(base_folder(tmp_path)), "classification", preprocessor=Preprocessor(labels=[1, 2, 3]),
                  max_steps=2, batch_size=8, progress=False)
    t.fit(data, data[:6])
    assert t.preprocessor.label2id[1] == 0 and t.preprocessor.label2id[3] == 2
    assert t.model.config.num_labels == 3 and t.model.classifier.out_features == 3
    t.save(tmp_path / "final")
    config = AutoConfig.from_pretrained(tmp_path / "final")
    assert config.id2label == {0: "1", 1: "2", 2: "3"} and config.label2id == {"1": 0, "2": 1, "3": 2}
    assert {p["label"] for p in t.predict(["great phone", "slow delivery"])} <= {1, 2, 3}
    assert "accuracy" in t.evaluate(data[:6])
    # a fresh tuner on the saved folder keeps the names and their order, with no labels= needed
    again = FineTuner(str(tmp_path / "final"), "classification", max_steps=1, progress=False)
    again.fit([r for r in data if r["label"] != 1])
    assert again.preprocessor.label_names == [1, 2, 3] and again.model.config.num_labels == 3


@pytest.mark.parametrize("labels,bad", [
    (["a", "b", "c"], r"data has 3 \(\['a', 'b', 'c'\]\)"),
    ([0, 1, 2], r"out of range for this head: \[2\]"),
])
def test_labels_beyond_a_model_objects_head_fail_before_training(labels, bad):
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [{"text": t, "label": labels[i % 3]} for i, t in enumerate(sample_texts(12))]
    t = FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"head for 2 labels.*" + bad + r".*num_labels=3, ignore_mismatched_sizes"):
        t.fit(data)
    assert t.state is None  # training never started
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("first,second,bad", [
    (["negative", "positive"], ["negative", "neutral", "positive"], r"\['neutral'\]"),
    ([0, 1], [0, 1, 2], r"\[2\]"),
])
def test_labels_beyond_a_fine_tuned_folders_head_fail_before_the_model_loads(tmp_path, first, second, bad):
    texts = sample_texts(12)
    tuned = FineTuner(str(base_folder(tmp_path)), "classification", max_steps=1, progress=False)
    tuned.fit([{"text": t, "label": first[i % len(first)]} for i, t in enumerate(texts)])
    folder = tuned.save(tmp_path / "tuned")
    data = [{"text": t, "label": second[i % len(second)]} for i, t in enumerate(texts)]
    t = FineTuner(str(folder), "classification", max_steps=1, progress=False, output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"fine-tuned for the 2 labels.*cannot predict: " + bad
                       + r".*num_labels=3, ignore_mismatched_sizes=True"):
        t.fit(data)
    assert t.model is None and not (tmp_path / "run").exists()  # the head was not silently re-initialized
    # the fix the message gives works: a new 3-label head on the fine-tuned body
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
    fixed = FineTuner(model, "classification", tokenizer=str(folder), max_steps=1, progress=False)
    fixed.fit(data)
    assert fixed.model.config.num_labels == 3


def test_mixed_label_types_list_an_example_of_each():
    data = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": "pos"}]
    with pytest.raises(ValueError, match=r"mixed types \(int, str\), e\.g\. 1 \(record 0\), 'pos' \(record 2\)"):
        tuner().fit(data)


# ---- case 6: texts longer than the model's position limit ----------------------------------------
def long_records(n=12):
    return [{"text": t, "label": i % 2} for i, t in enumerate(sample_texts(n, seed=3, min_words=20, max_words=40))]


@pytest.mark.parametrize("max_length", [None, 64])
def test_texts_beyond_the_position_limit_are_truncated_and_counted(tmp_path, max_length, caplog):
    tok = tiny_tokenizer(kind="encoder")
    model = tiny_model("bert", "classification", vocab_size=len(tok), num_labels=2, max_position_embeddings=16)
    train, val = long_records(12), long_records(6)
    t = FineTuner(model, "classification", tokenizer=tok, preprocessor=Preprocessor(max_length=max_length),
                  max_steps=2, batch_size=4, progress=False)
    with caplog.at_level("WARNING", logger="finetune_lib.data"):
        t.fit(train, val)  # no index error in the position embeddings
    assert t.preprocessor.max_length == 16
    if max_length:
        assert "max_length 64 is more than the model's limit of 16" in caplog.text
    too_long = lambda rs: sum(len(tok(r["text"])["input_ids"]) > 16 for r in rs)  # noqa: E731
    assert t.preprocessor.stats["train"].truncated == too_long(train) == len(train)
    assert t.preprocessor.stats["validation"].truncated == too_long(val) > 0
    assert len(t.predict([train[0]["text"]])) == 1


def test_texts_beyond_the_position_limit_for_a_decoder():
    tok = tiny_tokenizer(kind="decoder")
    model = tiny_model("gpt2", "causal_lm", vocab_size=len(tok), n_positions=16)
    data = [{"prompt": r["text"], "target": "great phone"} for r in long_records(8)]
    t = FineTuner(model, "causal_lm", tokenizer=tok, max_steps=2, batch_size=4, progress=False)
    t.fit(data)
    assert t.preprocessor.max_length == 16 and t.preprocessor.stats["train"].truncated == len(data)


def test_texts_beyond_the_position_limit_in_strict_mode_fail_before_training(tmp_path):
    tok = tiny_tokenizer(kind="encoder")
    model = tiny_model("bert", "classification", vocab_size=len(tok), num_labels=2, max_position_embeddings=16)
    t = FineTuner(model, "classification", tokenizer=tok, preprocessor=Preprocessor(strict=True), max_steps=2,
                  progress=False, output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"Record 0 of train is longer than max_length=16 tokens.*strict=False"):
        t.fit(long_records())
    assert t.state is None and not (tmp_path / "run").exists()


# ---- case 7: token ids beyond the embedding table, in the validation split too ---------------------
def test_validation_token_ids_beyond_the_embedding_table_fail_before_training(tmp_path):
    tok = tiny_tokenizer(kind="encoder")
    ids = lambda text: tok(text)["input_ids"]  # noqa: E731
    train = [{"text": "a b c", "label": 0}, {"text": "b a", "label": 1}] * 4
    val = [{"text": "the phone battery lasts all day", "label": 0}]
    size = max(max(ids(r["text"])) for r in train) + 1
    assert max(ids(val[0]["text"])) >= size  # the validation text needs rows the model lacks
    model = tiny_model("bert", "classification", vocab_size=size, num_labels=2)
    t = FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False, output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=rf"validation has token id \d+ but the model's embedding table has {size} "
                                         r"rows.*own tokenizer.*resize_token_embeddings"):
        t.fit(train, val)
    assert t.state is None and not (tmp_path / "run").exists()
    FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False).fit(train)  # train alone fits
