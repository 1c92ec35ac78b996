"""save() writes a folder that transformers' Auto classes and pipeline() load; loading from folders."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from finetune_lib import FineTuner
from finetune_lib.testing import save_tiny_pretrained

from .helpers import classification_records, generation_records, model_and_tokenizer


def test_save_then_auto_class_and_pipeline(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "base", arch="bert", task="classification")
    # fp32, so our predictions and the reloaded fp32 model's agree to 1e-5
    tuner = FineTuner(str(folder), "classification", max_steps=4, batch_size=8, progress=False, precision="fp32")
    tuner.fit(classification_records(32))
    out = tuner.save(tmp_path / "final")
    texts = ["great phone works perfectly", "broken charger slow delivery"]
    ours = tuner.predict(texts)

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        logits = model(**tok(texts, return_tensors="pt", padding=True)).logits
    probs = logits.softmax(-1)
    for i, pred in enumerate(ours):
        assert pred["label"] == model.config.id2label[int(probs[i].argmax())]
        assert pred["score"] == pytest.approx(float(probs[i].max()), abs=1e-5)
    clf = pipeline("text-classification", model=str(out), tokenizer=str(out))
    assert [r["label"] for r in clf(texts)] == [p["label"] for p in ours]
    assert (out / "README.md").read_text().startswith("---")


def test_reload_saved_model_for_prediction(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "base", arch="bert", task="classification")
    tuner = FineTuner(str(folder), "classification", max_steps=2, batch_size=8, progress=False)
    tuner.fit(classification_records(32))
    tuner.save(tmp_path / "final")
    again = FineTuner(str(tmp_path / "final"), "classification", progress=False)
    texts = ["great phone", "slow delivery"]
    for a, b in zip(again.predict(texts), tuner.predict(texts)):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert again.preprocessor.label_names == ["negative", "positive"]


def test_causal_lm_from_folder_generates_and_saves(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "base", arch="gpt2", task="causal_lm")
    tuner = FineTuner(str(folder), "causal_lm", max_steps=3, batch_size=8, progress=False)
    tuner.fit(generation_records(24))
    out = tuner.predict(["the phone", "my account password"], max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    tuner.save(tmp_path / "lm")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "lm") is not None


def test_model_object_needs_tokenizer():
    model, _ = model_and_tokenizer("bert", "classification", num_labels=2)
    tuner = FineTuner(model, "classification", max_steps=1, progress=False)
    with pytest.raises(ValueError, match="tokenizer="):
        tuner.fit(classification_records(8))


def test_model_object_with_wrong_label_count():
    model, tok = model_and_tokenizer("bert", "classification", num_labels=3)
    tuner = FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="3 labels but the data has 2"):
        tuner.fit(classification_records(16))
