"""User errors are caught before any training or writing, with a message that says the fix."""

import pytest

from finetune_lib import FineTuner

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
    with pytest.raises(ValueError, match=r"out of range for this head: \[2\].*look 1-based"):
        t.fit(data)
