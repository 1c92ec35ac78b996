"""Perplexity and token accuracy against a hand-written reference, with random padding and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_lib.metrics import NoDataError, Perplexity, TokenAccuracy

V = 11
FAST = settings(max_examples=30, deadline=None)


def make_examples(lengths: list[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per example: logits [L, V] (float64) and target [L] with some -100 (a masked prompt)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        logits = rng.normal(scale=3.0, size=(n, V))
        target = rng.integers(0, V, size=n)
        target[: rng.integers(0, n)] = -100  # a prompt takes no loss (the last token always does)
        out.append((logits, target))
    return out


def reference(examples) -> tuple[float, float]:
    """Hand-written exp(mean NLL) and token accuracy over the non-ignored tokens."""
    nll, correct, count = 0.0, 0, 0
    for logits, target in examples:
        for row, t in zip(logits, target):
            if t == -100:
                continue
            log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
            nll += log_z - row[t]
            correct += int(row.argmax() == t)
            count += 1
    return math.exp(nll / count), correct / count


def batches(examples, cuts: list[int], extra_pad: int, seed: int, dtype=torch.float64):
    """Split into batches, right-pad each to its longest example + extra_pad with random logits."""
    rng = np.random.default_rng(seed + 1)
    bounds = [0, *sorted(min(c, len(examples)) for c in cuts), len(examples)]
    for a, b in zip(bounds, bounds[1:]):
        if a == b:
            continue
        group = examples[a:b]
        t = max(len(x[1]) for x in group) + extra_pad
        logits = rng.normal(size=(len(group), t, V))  # padding logits: anything
        target = np.full((len(group), t), -100)
        for i, (lg, tg) in enumerate(group):
            logits[i, : len(tg)], target[i, : len(tg)] = lg, tg
        yield torch.tensor(logits, dtype=dtype), torch.tensor(target)


example_sets = st.tuples(
    st.lists(st.integers(1, 9), min_size=1, max_size=12),  # lengths
    st.lists(st.integers(0, 12), max_size=4),  # batch cuts
    st.integers(0, 3),  # extra padding
    st.integers(0, 2**16),  # seed
)


@FAST
@given(example_sets)
def test_perplexity_and_token_accuracy_match_hand_written_over_any_batching(case):
    lengths, cuts, extra_pad, seed = case
    examples = make_examples(lengths, seed)
    ppl_ref, acc_ref = reference(examples)
    ppl, acc = Perplexity(ignore_index=-100), TokenAccuracy()
    for logits, target in batches(examples, cuts, extra_pad, seed):
        ppl.update(logits, target)
        acc.update(logits, target)
    assert ppl.compute() == pytest.approx(ppl_ref, rel=1e-9)
    assert acc.compute() == pytest.approx(acc_ref, abs=1e-12)


@FAST
@given(example_sets, st.integers(0, 12))
def test_merge_equals_one_metric_fed_both_halves(case, cut):
    lengths, cuts, extra_pad, seed = case
    data = list(batches(make_examples(lengths, seed), cuts, extra_pad, seed))
    cut = min(cut, len(data))
    for make in (Perplexity, TokenAccuracy):
        a, b, whole = make(), make(), make()
        for i, (logits, target) in enumerate(data):
            (a if i < cut else b).update(logits, target)
            whole.update(logits, target)
        assert a.merge(b).compute() == pytest.approx(whole.compute(), rel=1e-12)


def test_half_precision_logits_are_upcast():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, V), torch.randint(0, V, (2, 5))
    full, half = Perplexity(), Perplexity()
    full.update(logits, target)
    half.update(logits.bfloat16(), target)
    assert half.compute() == pytest.approx(full.compute(), rel=2e-2)
    assert half.nll_sum.dtype == torch.float64


def test_example_stats_give_the_same_value():
    examples = make_examples([3, 5, 2], seed=1)
    ((logits, target),) = batches(examples, [], 1, seed=1)
    for metric in (Perplexity(), TokenAccuracy()):
        metric.update(logits, target)
        stats = metric.example_stats(logits, target)
        assert stats.shape == (3, 2)
        assert metric.compute_from_stats(stats) == pytest.approx(metric.compute(), rel=1e-12)


def test_errors_tell_the_fix():
    with pytest.raises(
        ValueError,
        match=r"logits \[B, T, V\] and target \[B, T\].*got logits \(2, 5, 11\) and target \(2, 4\)",
    ):
        Perplexity().update(torch.zeros(2, 5, V), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 11\)"):
        TokenAccuracy().update(torch.zeros(1, 2, V), torch.tensor([[3, 11]]))
    m = Perplexity()
    m.update(torch.zeros(1, 2, V), torch.full((1, 2), -100))
    with pytest.raises(NoDataError, match="every target position was ignore_index"):
        m.compute()
    with pytest.raises(NoDataError, match="no data"):
        TokenAccuracy().compute()
