"""Evaluation through FineTuner: streaming metrics, perplexity independent of batching, slices,
intervals, validation metrics in the history, and generation only when a metric needs text."""

import math

import pytest
import torch

from finetune_lib import FineTuner, MetricSuite
from finetune_lib.metrics import BLEU, F1, Accuracy, ExactMatch, Perplexity

from .helpers import classification_records, generation_records, model_and_tokenizer


def lm_tuner(**kw):
    model, tok = model_and_tokenizer("gpt2", "causal_lm", dropout=0.0)
    return FineTuner(model, "causal_lm", tokenizer=tok, max_steps=3, batch_size=8, progress=False, **kw)


def test_perplexity_does_not_depend_on_batch_size_or_padding():
    tuner = lm_tuner()
    data = generation_records(30)
    tuner.fit(data)
    a = tuner.evaluate(data, batch_size=1)
    b = tuner.evaluate(data, batch_size=7)
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]), rel=1e-5)
    # and against a hand-written exp(mean NLL) over the target tokens, one example at a time
    pre, model = tuner.preprocessor, tuner.model
    nll, count = 0.0, 0
    with torch.no_grad():
        for f in pre.encode(data, "check"):
            ids = torch.tensor([f["input_ids"]])
            labels = torch.tensor([f["labels"]])
            logits = model(input_ids=ids).logits[0, :-1]
            target = labels[0, 1:]
            keep = target != -100
            nll += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    assert a["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_validation_metrics_are_logged_each_epoch(tmp_path):
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    tuner = FineTuner(model, "classification", tokenizer=tok, epochs=2, batch_size=8, progress=False,
                      metrics=MetricSuite([Accuracy(), F1(average="macro")]), output_dir=tmp_path / "run")
    data = classification_records(48)
    tuner.fit(data[:32], data[32:])
    evals = [r for r in tuner.history if "validation/accuracy" in r]
    assert [r["epoch"] for r in evals] == [1.0, 2.0]
    assert {"validation/loss", "validation/accuracy", "validation/f1"} <= set(evals[-1])
    assert (tmp_path / "run" / "log.jsonl").read_text().count("validation/f1") == 2


def test_evaluate_matches_sklearn_and_gives_slices_and_intervals():
    from sklearn.metrics import accuracy_score, f1_score

    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    tuner = FineTuner(model, "classification", tokenizer=tok, max_steps=4, batch_size=8, progress=False)
    data = classification_records(60)
    for i, r in enumerate(data):
        r["source"] = "app" if i % 3 else "web"
    tuner.fit(data[:40])
    test = data[40:]
    res = tuner.evaluate(test, slices="source", confidence=0.9)
    preds = [p["label"] for p in tuner.predict([r["text"] for r in test])]
    truth = [r["label"] for r in test]
    assert res["accuracy"] == pytest.approx(accuracy_score(truth, preds))
    assert res["f1"] == pytest.approx(f1_score(truth, preds, average="macro"))
    assert res["app/count"] + res["web/count"] == len(test)
    assert res["accuracy_low"] <= res["accuracy"] <= res["accuracy_high"]


def test_generation_metrics_call_generate_only_when_needed(monkeypatch):
    from finetune_lib.training import evaluation

    calls = []
    real = evaluation.generate_texts

    def spy(*a, **kw):
        calls.append(len(a[2]))
        return real(*a, **kw)

    monkeypatch.setattr(evaluation, "generate_texts", spy)
    data = generation_records(12)
    tuner = lm_tuner(max_new_tokens=4)
    tuner.fit(data)
    tuner.evaluate(data)
    assert calls == []  # perplexity and token accuracy need no text
    tuner.metrics = MetricSuite([Perplexity(), BLEU(), ExactMatch()])
    res = tuner.evaluate(data)
    assert sum(calls) == len(data) and 0 <= res["bleu"] <= 100


def test_seq2seq_evaluate_with_bleu():
    model, tok = model_and_tokenizer("t5", "seq2seq")
    tuner = FineTuner(model, "seq2seq", tokenizer=tok, max_steps=2, batch_size=8, progress=False, max_new_tokens=4,
                      metrics=MetricSuite([Perplexity(), BLEU()]))
    data = generation_records(10)
    tuner.fit(data)
    res = tuner.evaluate(data)
    assert res["perplexity"] > 1 and "bleu" in res
    assert len(tuner.predict(["the phone"])) == 1


def test_metric_named_loss_is_refused():
    class Loss(Accuracy):
        name = "loss"

    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    with pytest.raises(ValueError, match="named 'loss'"):  # when the FineTuner is built, before any training
        FineTuner(model, "classification", tokenizer=tok, max_steps=1, progress=False, metrics=MetricSuite([Loss()]))


def test_evaluation_keeps_one_batch_of_logits_alive():
    """Memory stays flat over the eval set: when the model runs on batch k, nothing still holds the
    logits (or the tensors they view) that metrics were handed for batches before k."""
    import weakref

    from finetune_lib.metrics import Metric

    handed: list[weakref.ref] = []

    class Watch(Metric):
        input = "logits"

        def __init__(self):
            super().__init__(name="watch")
            self.add_state("n", torch.zeros(()), reduce="sum")

        def update(self, logits, target):
            handed.append(weakref.ref(logits))
            if logits._base is not None:
                handed.append(weakref.ref(logits._base))
            self.n += 1

        def compute(self):
            return float(self.n)

    tuner = lm_tuner(metrics=MetricSuite([Perplexity(), Watch()]))
    tuner.fit(generation_records(8))
    alive_at_forward = []
    hook = tuner.model.register_forward_pre_hook(
        lambda module, args: alive_at_forward.append(sum(r() is not None for r in handed)))
    try:
        results = tuner.evaluate(generation_records(40), batch_size=4)
    finally:
        hook.remove()
    assert results["watch"] == 10 and len(alive_at_forward) == 10
    assert alive_at_forward == [0] * 10  # the previous batch's logits were released before each forward
