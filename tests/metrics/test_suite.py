"""MetricSuite: routing, slices, bootstrap intervals, text generation, user metrics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from finetune_lib.metrics import (
    BLEU,
    F1,
    Accuracy,
    ConfusionMatrix,
    EvalBatch,
    ExactMatch,
    Metric,
    MetricSuite,
    NoDataError,
    Perplexity,
    Precision,
    TokenAccuracy,
)

LANGS = ["en", "fr", "de"]


# ---- data ----------------------------------------------------------------------------------------
def classification_batches(
    n: int = 40, batch_size: int = 7, classes: int = 3, seed: int = 0
) -> list[EvalBatch]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[: n // 2] = logits[: n // 2].argmax(-1)  # better than chance
    records = [{"text": "x" * (i % 9), "label": int(labels[i]), "lang": LANGS[i % 3]} for i in range(n)]
    return [
        EvalBatch(
            "classification",
            logits[i : i + batch_size],
            labels[i : i + batch_size],
            records[i : i + batch_size],
        )
        for i in range(0, n, batch_size)
    ]


def lm_batches(n: int = 12, batch_size: int = 4, t: int = 6, v: int = 9, seed: int = 0) -> list[EvalBatch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        logits = torch.randn(b, t, v, generator=g, dtype=torch.float64)
        labels = torch.randint(0, v, (b, t), generator=g)
        for i in range(b):  # a masked prompt and right padding
            labels[i, : 1 + (start + i) % 2] = -100
            labels[i, t - (start + i) % 3 :] = -100
        records = [
            {"prompt": f"p{start + i}", "target": f"the cat {start + i}", "lang": LANGS[(start + i) % 2]}
            for i in range(b)
        ]
        out.append(
            EvalBatch(
                "causal_lm",
                logits,
                labels,
                records,
                [r["prompt"] for r in records],
                [r["target"] for r in records],
            )
        )
    return out


def fake_generate(prompts: list[str]) -> list[str]:
    return [f"the cat {p[1:]}" if int(p[1:]) % 3 else f"a dog {p[1:]}" for p in prompts]


def all_of(batches: list[EvalBatch]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    return (
        torch.cat([b.logits for b in batches]),
        torch.cat([b.labels for b in batches]),
        [r for b in batches for r in b.records],
    )


# ---- a user metric in 15 lines ---------------------------------------------------------------------
class ErrorRate(Metric):
    """Fraction of wrong predictions (a user metric: the class attributes, add_state, update, compute)."""

    name = "error_rate"
    input = "classes"
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("wrong", 0)
        self.add_state("total", 0)

    def update(self, preds, target) -> None:
        self.wrong += (torch.as_tensor(preds) != torch.as_tensor(target)).sum()
        self.total += len(target)

    def compute(self) -> float:
        return int(self.wrong) / int(self.total)  # python ints: int64 / int64 tensors give float32


# ---- routing -------------------------------------------------------------------------------------
def test_classification_routing_matches_sklearn_and_user_metric_works():
    batches = classification_batches()
    suite = MetricSuite(
        [Accuracy(), F1(average="macro"), Precision(average="weighted"), ConfusionMatrix(), ErrorRate()]
    )
    results = suite.run(batches)
    logits, labels, _ = all_of(batches)
    preds = logits.argmax(-1)
    assert results["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert results["f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"), abs=1e-12)
    assert results["precision"] == pytest.approx(
        skm.precision_score(labels, preds, average="weighted"), abs=1e-12
    )
    assert results["error_rate"] == pytest.approx(1 - results["accuracy"], abs=1e-12)
    assert "confusion_matrix" not in results  # not a scalar: an artifact
    assert suite.last_artifacts["confusion_matrix"] == skm.confusion_matrix(labels, preds).tolist()
    assert list(results) == ["accuracy", "f1", "precision", "error_rate"]


def test_lm_routing_masks_ignored_tokens_for_class_metrics():
    batches = lm_batches()
    results = MetricSuite([Perplexity(), TokenAccuracy(), Accuracy(name="token_acc_as_classes")]).run(batches)
    ppl, tok = Perplexity(), TokenAccuracy()
    for b in batches:
        ppl.update(b.logits, b.labels)
        tok.update(b.logits, b.labels)
    assert results["perplexity"] == ppl.compute()
    assert results["token_accuracy"] == tok.compute()
    assert results["token_acc_as_classes"] == pytest.approx(tok.compute(), abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 12), st.integers(0, 3))
def test_results_do_not_depend_on_batching(batch_size, seed):
    suite = MetricSuite([Perplexity(), TokenAccuracy(), F1(average="micro")])
    one = suite.run(lm_batches(n=12, batch_size=12, seed=seed))
    logits, labels, records = all_of(lm_batches(n=12, batch_size=12, seed=seed))
    rebatched = [
        EvalBatch(
            "causal_lm", logits[i : i + batch_size], labels[i : i + batch_size], records[i : i + batch_size]
        )
        for i in range(0, 12, batch_size)
    ]
    again = suite.run(rebatched)
    assert again == pytest.approx(one, rel=1e-12)


def test_text_metrics_get_generated_text_and_generate_is_called_once_per_batch():
    calls: list[list[str]] = []

    def generate(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        return fake_generate(prompts)

    batches = lm_batches()
    suite = MetricSuite([BLEU(), Perplexity(), ExactMatch()])
    assert suite.needs_text
    results = suite.run(batches, generate=generate)
    assert calls == [b.prompts for b in batches]
    hyps = fake_generate([p for b in batches for p in b.prompts])
    refs = [r for b in batches for r in b.references]
    assert results["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert results["exact_match"] == pytest.approx(np.mean([h == r for h, r in zip(hyps, refs)]))
    assert suite.metrics[0].signature.startswith("nrefs:1")


def test_generate_not_called_without_text_metrics():
    def generate(prompts):  # pragma: no cover - must not run
        raise AssertionError("generate called")

    suite = MetricSuite.default("causal_lm")
    assert not suite.needs_text
    suite.run(lm_batches(), generate=generate)


def test_text_metric_without_generate_fails_before_consuming_batches():
    def batches():  # pragma: no cover - must not be consumed
        raise AssertionError("consumed")
        yield

    with pytest.raises(ValueError, match=r"\['bleu'\] consume generated text: pass generate="):
        MetricSuite([BLEU()]).run(batches())
    with pytest.raises(ValueError, match="no prompts/references"):
        MetricSuite([BLEU()]).run(classification_batches(), generate=fake_generate)
    with pytest.raises(ValueError, match="one string per prompt"):
        MetricSuite([BLEU()]).run(lm_batches(), generate=lambda prompts: ["x"])


# ---- slices --------------------------------------------------------------------------------------
def subset_batch(batches: list[EvalBatch], keep) -> list[EvalBatch]:
    out = []
    for b in batches:
        rows = [i for i, r in enumerate(b.records) if keep(r)]
        if rows:
            out.append(EvalBatch(b.task, b.logits[rows], b.labels[rows], [b.records[i] for i in rows]))
    return out


def test_slices_by_predicates_equal_runs_on_the_subsets():
    batches = classification_batches()
    suite = MetricSuite([Accuracy(), F1(average="macro")])
    slices = {"short": lambda r: len(r["text"]) < 4, "all": lambda r: True, "none": lambda r: False}
    results = suite.run(batches, slices=slices)
    assert results["all/accuracy"] == results["accuracy"] and results["all/count"] == 40
    short = suite.clone().run(subset_batch(batches, slices["short"]))
    assert results["short/accuracy"] == short["accuracy"] and results["short/f1"] == short["f1"]
    assert results["short/count"] == sum(len(r["text"]) < 4 for b in batches for r in b.records)
    assert results["none/count"] == 0 and math.isnan(results["none/accuracy"])


def test_slices_by_column_on_lm_batches():
    batches = lm_batches()
    suite = MetricSuite([Perplexity(), Accuracy(), BLEU()])
    results = suite.run(batches, generate=fake_generate, slices="lang")
    for lang in ("en", "fr"):
        sub = [
            EvalBatch(
                b.task,
                b.logits[rows],
                b.labels[rows],
                [b.records[i] for i in rows],
                [b.prompts[i] for i in rows],
                [b.references[i] for i in rows],
            )
            for b in batches
            if (rows := [i for i, r in enumerate(b.records) if r["lang"] == lang])
        ]
        alone = suite.clone().run(sub, generate=fake_generate)
        for name in ("perplexity", "accuracy", "bleu"):
            assert results[f"{lang}/{name}"] == pytest.approx(alone[name], rel=1e-12)
        assert results[f"{lang}/count"] == sum(len(b.records) for b in sub)
    assert "de/count" not in results
    with pytest.raises(KeyError, match="no 'domain' column"):
        suite.run(batches, generate=fake_generate, slices="domain")


# ---- confidence intervals ------------------------------------------------------------------------
def test_bootstrap_is_seeded_contains_the_estimate_and_matches_a_plain_bootstrap():
    batches = classification_batches(n=60)
    suite = MetricSuite([Accuracy(), F1(average="macro"), ErrorRate(), ConfusionMatrix()])
    a = suite.run(batches, confidence=0.9, n_bootstrap=200, seed=3)
    b = suite.run(batches, confidence=0.9, n_bootstrap=200, seed=3)
    c = suite.run(batches, confidence=0.9, n_bootstrap=200, seed=4)
    assert a == b and a != c
    for name in ("accuracy", "f1", "error_rate"):
        assert a[f"{name}_low"] <= a[name] <= a[f"{name}_high"]
        assert a[f"{name}_low"] < a[f"{name}_high"]
    assert "confusion_matrix_low" not in a
    # the same resamples as a plain numpy percentile bootstrap of per-example correctness
    logits, labels, _ = all_of(batches)
    correct = (logits.argmax(-1) == labels).numpy()
    rng = np.random.default_rng(3)
    values = [correct[rng.integers(0, 60, 60)].mean() for _ in range(200)]
    assert (a["accuracy_low"], a["accuracy_high"]) == pytest.approx(
        tuple(np.quantile(values, [0.05, 0.95])), abs=1e-12
    )


def test_bootstrap_on_lm_tasks_with_slices():
    suite = MetricSuite([Perplexity(), TokenAccuracy(), Accuracy(), BLEU(), ExactMatch()])
    results = suite.run(
        lm_batches(n=16), generate=fake_generate, slices="lang", confidence=0.95, n_bootstrap=100
    )
    for prefix in ("", "en/", "fr/"):
        for name in suite.names:
            assert (
                results[f"{prefix}{name}_low"]
                <= results[f"{prefix}{name}"]
                <= results[f"{prefix}{name}_high"]
            )
    assert results["perplexity_low"] < results["perplexity_high"]


def test_confidence_needs_stats_for_logits_metrics():
    class MeanLogit(Metric):
        name, input = "mean_logit", "logits"

        def __init__(self) -> None:
            super().__init__()
            self.add_state("total", 0.0)

        def update(self, logits, target) -> None:
            self.total += logits.double().mean()

        def compute(self) -> float:
            return float(self.total)

    suite = MetricSuite([MeanLogit()])
    assert "mean_logit" in suite.run(lm_batches())
    with pytest.raises(NotImplementedError, match="override example_stats"):
        suite.run(lm_batches(), confidence=0.95)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        suite.run(lm_batches(), confidence=95)


# ---- construction --------------------------------------------------------------------------------
def test_duplicate_names_are_an_error_at_construction():
    with pytest.raises(ValueError, match=r"two metrics are named 'f1'.*name='f1_micro'"):
        MetricSuite([F1(average="macro"), F1(average="micro")])
    MetricSuite([F1(average="macro"), F1(average="micro", name="f1_micro")])
    with pytest.raises(TypeError, match=r"instead of an instance Accuracy\(\)"):
        MetricSuite([Accuracy])


def test_default_suites_clone_and_names():
    assert MetricSuite.default("classification").names == ["accuracy", "f1"]
    assert MetricSuite.default("classification").metrics[1].average == "macro"
    assert MetricSuite.default("causal_lm").names == ["perplexity", "token_accuracy"]
    assert MetricSuite.default("seq2seq").names == ["perplexity", "token_accuracy"]
    assert MetricSuite.default("regression").names == ["mse", "mae", "r2", "pearson", "spearman"]
    assert MetricSuite.default("multilabel_classification").names == [
        "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "subset_accuracy"]
    with pytest.raises(ValueError, match="classification"):
        MetricSuite.default("ranking")
    suite = MetricSuite([Accuracy()])
    suite.run(classification_batches())
    copy = suite.clone()
    assert copy.names == suite.names and copy.metrics[0] is not suite.metrics[0]
    assert int(copy.metrics[0].total) == 0 and int(suite.metrics[0].total) == 40


def test_run_resets_first_and_empty_eval_set_says_no_data():
    suite = MetricSuite([Accuracy()])
    assert suite.run(classification_batches()) == suite.run(classification_batches())
    with pytest.raises(NoDataError, match="no data"):
        suite.run([])
