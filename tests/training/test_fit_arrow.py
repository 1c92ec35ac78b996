"""FineTuner trains and evaluates on a `datasets.Dataset` exactly as on the same records as a list."""

from __future__ import annotations

import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib import FineTuner, Preprocessor  # noqa: E402

from .helpers import classification_records, generation_records, model_and_tokenizer  # noqa: E402


def _run(arch, task, train, validation, cache, **kw):
    model, tok = model_and_tokenizer(arch, task, **({"num_labels": 2} if task == "classification" else {}))
    tuner = FineTuner(model, task, tokenizer=tok, preprocessor=Preprocessor(cache_dir=cache, max_length=24),
                      epochs=2, batch_size=8, learning_rate=3e-3, log_every=1, progress=False, seed=3, **kw)
    history = tuner.fit(train, validation)
    return tuner, [r["train/loss"] for r in history if "train/loss" in r]


@pytest.mark.parametrize("arch,task,make", [("bert", "classification", classification_records),
                                            ("gpt2", "causal_lm", generation_records)])
def test_fit_on_a_dataset_gives_the_list_paths_losses(tmp_path, arch, task, make):
    train, validation = make(48, seed=0), make(16, seed=1)
    listed, list_losses = _run(arch, task, train, validation, False, eval_every=3)
    as_arrow = [datasets.Dataset.from_list(train), datasets.Dataset.from_list(validation)]
    arrowed, arrow_losses = _run(arch, task, *as_arrow, tmp_path, eval_every=3)
    assert len(list_losses) == len(arrow_losses) >= 6
    assert arrow_losses == pytest.approx(list_losses, rel=1e-5, abs=1e-6)
    vals = [[r for r in t.history if "validation/loss" in r] for t in (listed, arrowed)]
    assert [r["validation/loss"] for r in vals[0]] == pytest.approx([r["validation/loss"] for r in vals[1]], rel=1e-5)
    assert arrowed.evaluate(as_arrow[1]) == pytest.approx(listed.evaluate(validation), rel=1e-5)
    assert len(list(tmp_path.iterdir())) == 2  # train and validation, cached


def test_fit_on_arrow_records_and_a_builder(tmp_path):
    from finetune_lib.data.arrow_records import ArrowRecords

    train = classification_records(32)
    _, list_losses = _run("bert", "classification", train, None, False, max_steps=3)
    _, wrapped = _run("bert", "classification", ArrowRecords(datasets.Dataset.from_list(train), name="train"), None,
                      tmp_path, max_steps=3)
    assert wrapped == pytest.approx(list_losses, rel=1e-5, abs=1e-6)


def test_arrow_records_are_checked_column_wise():
    from finetune_lib.training.loading import as_records

    ds = datasets.Dataset.from_list([{"review": "good", "label": "pos"}])
    with pytest.raises(ValueError, match=r"no \['text'\] column.*rename_column"):
        as_records(ds, "train", "classification")
    ds = datasets.Dataset.from_list([{"text": "good", "label": "pos"}, {"text": None, "label": "neg"}])
    with pytest.raises(ValueError, match=r"column 'text' has 1 missing values \(rows \[1\]\)"):
        as_records(ds, "train", "classification")
    ds = datasets.Dataset.from_list([{"text": "good", "label": 1.5}])
    with pytest.raises(ValueError, match="whole numbers"):
        as_records(ds, "train", "classification")
    ds = datasets.Dataset.from_list([{"text": "good", "label": float("nan")}])
    with pytest.raises(ValueError, match="finite"):
        as_records(ds, "train", "regression")
    good = datasets.Dataset.from_list([{"text": "good", "label": "pos"}])
    assert as_records(good, "train", "classification") is good  # passed through, not turned into dicts
