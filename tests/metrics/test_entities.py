"""Entity-level metrics against seqeval (the reference only; the library never imports it)."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from finetune_lib.metrics import (
    EntityF1,
    EntityPrecision,
    EntityRecall,
    EntityReport,
    EvalBatch,
    MetricSuite,
    TagAccuracy,
)
from finetune_lib.metrics.entities import extract_entities

seqeval = pytest.importorskip("seqeval.metrics")
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

TYPES = ("PER", "LOC", "ORG")


def random_tags(rng: random.Random, n: int, prefixes: tuple[str, ...] = ("B", "I")) -> list[str]:
    return ["O" if rng.random() < 0.4 else f"{rng.choice(prefixes)}-{rng.choice(TYPES)}" for _ in range(n)]


def random_corpus(seed: int, prefixes: tuple[str, ...] = ("B", "I"), sentences: int = 60):
    rng = random.Random(seed)
    truth, pred = [], []
    for _ in range(sentences):
        n = rng.randint(1, 12)
        t = random_tags(rng, n, prefixes)
        # predictions: mostly the truth, with some tags changed, so that scores are neither 0 nor 1
        p = [x if rng.random() < 0.7 else random_tags(rng, 1, prefixes)[0] for x in t]
        truth.append(t)
        pred.append(p)
    return truth, pred


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on undefined ratios (then 0, as ours)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("prefixes", [("B", "I"), ("I",), ("B", "I", "E", "S")], ids=["IOB2", "IOB1", "BIOES"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extract_entities_equals_seqeval(seed, prefixes):
    truth, pred = random_corpus(seed, prefixes)
    for tags in truth + pred:
        assert extract_entities(tags) == get_entities(tags)


@pytest.mark.parametrize("prefixes", [("B", "I"), ("I",), ("B", "I", "E", "S")], ids=["IOB2", "IOB1", "BIOES"])
@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_precision_recall_f1_equal_seqeval(seed, average, prefixes):
    truth, pred = random_corpus(seed, prefixes)
    for cls, ref in ((EntityPrecision, seqeval.precision_score), (EntityRecall, seqeval.recall_score),
                     (EntityF1, seqeval.f1_score)):
        metric = cls(average=average)
        for i in range(0, len(truth), 7):  # streamed in uneven batches
            metric.update(pred[i: i + 7], truth[i: i + 7])
        assert metric.compute() == pytest.approx(quiet(ref, truth, pred, average=average), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_report_and_accuracy_equal_seqeval(seed):
    truth, pred = random_corpus(seed)
    report, acc = EntityReport(), TagAccuracy()
    report.update(pred, truth)
    acc.update(pred, truth)
    expected = quiet(seqeval.classification_report, truth, pred, output_dict=True)
    got = report.compute()
    assert set(got) == set(expected)
    for key, row in expected.items():
        for field in ("precision", "recall", "f1-score", "support"):
            assert got[key][field] == pytest.approx(float(row[field]), abs=1e-12), (key, field)
    assert acc.compute() == pytest.approx(seqeval.accuracy_score(truth, pred))


def test_one_entity_type_and_merge():
    truth, pred = random_corpus(7)
    per = EntityF1(entity_type="PER", name="f1_PER")
    per.update(pred, truth)
    expected = quiet(seqeval.classification_report, truth, pred, output_dict=True)["PER"]["f1-score"]
    assert per.compute() == pytest.approx(expected)
    a, b, whole = EntityF1(), EntityF1(), EntityF1()
    a.update(pred[:30], truth[:30])
    b.update(pred[30:], truth[30:])
    whole.update(pred, truth)
    assert a.merge(b).compute() == pytest.approx(whole.compute())
    assert len(whole.counts) <= len(TYPES)  # one row per type: the state does not grow with the data


def test_no_entities_scores_zero_and_no_data_raises():
    m = EntityF1()
    with pytest.raises(ValueError, match="no data"):
        m.compute()
    m.update([["O", "O"]], [["O", "O"]])
    assert m.compute() == 0.0 == quiet(seqeval.f1_score, [["O", "O"]], [["O", "O"]])


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="sentence 0 has 1 predicted tags for 2"):
        EntityF1().update([["O"]], [["O", "B-PER"]])
    with pytest.raises(TypeError, match="lists of tag lists"):
        EntityF1().update(["O", "B-PER"], ["O", "B-PER"])
    with pytest.raises(ValueError, match="average"):
        EntityF1(average="samples")
    with pytest.raises(ValueError, match="without its B-/I- prefix"):
        EntityF1(entity_type="B-PER")


def tag_batch(pred, truth, records):
    n = len(truth)
    return EvalBatch("token_classification", torch.zeros(n, 1, 2), torch.zeros(n, 1, dtype=torch.long), records,
                     extra={"tags": (pred, truth)})


def test_suite_slices_and_bootstrap_intervals():
    truth, pred = random_corpus(3, sentences=40)
    records = [{"lang": "en" if i % 2 else "fr"} for i in range(len(truth))]
    batches = [tag_batch(pred[i: i + 8], truth[i: i + 8], records[i: i + 8]) for i in range(0, len(truth), 8)]
    suite = MetricSuite.default("token_classification")
    assert suite.names == ["precision", "recall", "f1", "accuracy", "entities"]
    results = suite.run(batches, slices="lang", confidence=0.9, n_bootstrap=200)
    assert results["f1"] == pytest.approx(quiet(seqeval.f1_score, truth, pred))
    assert results["f1_low"] <= results["f1"] <= results["f1_high"]
    assert results["accuracy_low"] <= results["accuracy"] <= results["accuracy_high"]
    en = [i for i in range(len(truth)) if i % 2]
    assert results["en/f1"] == pytest.approx(quiet(seqeval.f1_score, [truth[i] for i in en], [pred[i] for i in en]))
    assert results["en/count"] == len(en)
    assert "PER" in suite.last_artifacts["entities"]
    # a macro F1's intervals go through per-sentence counts by type
    macro = MetricSuite([EntityF1(average="macro")]).run(batches, confidence=0.9, n_bootstrap=100)
    assert not math.isnan(macro["f1_low"]) and macro["f1_low"] <= macro["f1"] <= macro["f1_high"]


def test_tag_metrics_refused_on_other_tasks():
    with pytest.raises(ValueError, match="token_classification"):
        MetricSuite([EntityF1()]).check_task("classification")
