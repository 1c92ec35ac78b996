"""Classification metrics against scikit-learn, streaming, merging and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from finetune_lib.metrics import AVERAGES, F1, Accuracy, ConfusionMatrix, NoDataError, Precision, Recall

FAST = settings(max_examples=40, deadline=None)


@st.composite
def labelled(draw: st.DrawFn, binary: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(preds, target, cut points): class ids in 0..K-1 and a random split into batches."""
    k = 2 if binary else draw(st.integers(1, 7))
    n = draw(st.integers(1, 60))
    preds = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    target = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return preds, target, cuts


def chunks(values: list[int], cuts: list[int]) -> list[list[int]]:
    bounds = [0, *cuts, len(values)]
    return [values[a:b] for a, b in zip(bounds, bounds[1:])]


def streamed(metric, preds: list[int], target: list[int], cuts: list[int]):
    for p, t in zip(chunks(preds, cuts), chunks(target, cuts)):
        metric.update(torch.tensor(p, dtype=torch.long), torch.tensor(t, dtype=torch.long))
    return metric.compute()


SKLEARN = {Precision: skm.precision_score, Recall: skm.recall_score, F1: skm.f1_score}


@FAST
@given(labelled())
def test_accuracy_matches_sklearn_over_any_split(data):
    preds, target, cuts = data
    assert streamed(Accuracy(), preds, target, cuts) == pytest.approx(
        skm.accuracy_score(target, preds), abs=1e-12
    )


@FAST
@given(labelled(), st.sampled_from(["macro", "micro", "weighted"]), st.sampled_from([Precision, Recall, F1]))
def test_per_class_metrics_match_sklearn(data, average, cls):
    preds, target, cuts = data
    expected = SKLEARN[cls](target, preds, average=average, zero_division=0)
    assert streamed(cls(average=average), preds, target, cuts) == pytest.approx(expected, abs=1e-9)


@FAST
@given(labelled(binary=True), st.sampled_from([Precision, Recall, F1]))
def test_binary_average_matches_sklearn(data, cls):
    preds, target, cuts = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = SKLEARN[cls](target, preds, average="binary", zero_division=0)
    assert streamed(cls(average="binary"), preds, target, cuts) == pytest.approx(expected, abs=1e-9)


@FAST
@given(labelled())
@pytest.mark.filterwarnings("ignore:A single label")
def test_confusion_matrix_matches_sklearn(data):
    preds, target, cuts = data
    got = streamed(ConfusionMatrix(), preds, target, cuts)
    k = max(preds + target) + 1
    assert got == skm.confusion_matrix(target, preds, labels=list(range(k))).tolist()


@FAST
@given(labelled(), st.integers(0, 60), st.sampled_from(AVERAGES[1:]))
def test_merge_equals_one_metric_fed_both_halves(data, cut, average):
    preds, target, _ = data
    cut = min(cut, len(preds))
    for make in (Accuracy, lambda: F1(average=average), ConfusionMatrix):
        a, b, whole = make(), make(), make()
        a.update(preds[:cut], target[:cut])
        b.update(preds[cut:], target[cut:])
        whole.update(preds, target)
        assert a.merge(b).compute() == whole.compute()


def test_classes_grow_and_labels_absent_everywhere_are_skipped_like_sklearn():
    m = F1(average="macro")
    m.update([0, 1], [0, 1])
    m.update([5, 5], [5, 0])  # classes 2..4 never appear: not averaged over (scikit-learn does the same)
    expected = skm.f1_score([0, 1, 5, 0], [0, 1, 5, 5], average="macro")
    assert m.compute() == pytest.approx(expected, abs=1e-12)
    assert m.tp.shape == (6,)


def test_inputs_lists_tensors_scores_and_ignore_index():
    m = Accuracy(ignore_index=-100)
    m.update(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.6]]), torch.tensor([1, 1, -100]))
    m.update([[1, 1]], [[1, -100]])  # any shape, flattened
    assert m.compute() == pytest.approx(2 / 3)
    assert int(m.total) == 3


def test_reset_and_clone_empty_the_state():
    m = Recall(average="micro")
    m.update([1, 2], [1, 2])
    fresh = m.clone()
    assert fresh.average == "micro" and fresh.tp.numel() == 0
    m.reset()
    with pytest.raises(NoDataError, match="no data"):
        m.compute()


def test_errors_tell_the_fix():
    with pytest.raises(ValueError, match=r"unknown average='avg'.*'binary', 'macro', 'micro', 'weighted'"):
        F1(average="avg")
    with pytest.raises(ValueError, match=r"same shape.*got preds \(3,\) and target \(2,\)"):
        Accuracy().update([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="average='macro'"):
        F1().update([0, 2], [0, 1])  # binary by default
    with pytest.raises(ValueError, match="ignore_index"):
        Precision(average="macro").update([0, -1], [0, 1])
    with pytest.raises(TypeError, match="map string labels to ids"):
        Accuracy().update(["pos"], ["neg"])
    with pytest.raises(ValueError, match="integer class ids"):
        Accuracy().update([0.5], [1])
    with pytest.raises(NoDataError, match="has seen no data"):
        Accuracy().compute()
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(num_classes=2).update([2], [0])


def test_confusion_matrix_fixed_size():
    m = ConfusionMatrix(num_classes=3)
    m.update(np.array([0, 1]), np.array([1, 1]))
    assert m.compute() == [[0, 0, 0], [1, 1, 0], [0, 0, 0]]  # row: true class, column: predicted
