"""BLEU / chrF against sacrebleu (one and several references), ROUGE-L and exact match."""

from __future__ import annotations

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_lib.metrics import BLEU, ChrF, ExactMatch, NoDataError, RougeL
from finetune_lib.metrics.generation import lcs_length, rouge_l, rouge_tokenize

FAST = settings(max_examples=30, deadline=None)
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", ".", "Cat", "mat,", "über"]

sentences = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)


@st.composite
def corpus(draw: st.DrawFn, max_refs: int = 1) -> tuple[list[str], list[list[str]], list[int]]:
    """Hypotheses, references per hypothesis (1..max_refs each), and batch cut points."""
    n = draw(st.integers(1, 12))
    hyps = draw(st.lists(sentences, min_size=n, max_size=n))
    refs = [draw(st.lists(sentences, min_size=1, max_size=max_refs)) for _ in range(n)]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    return hyps, refs, cuts


def streams(refs: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout, written independently: one list per reference stream, None if missing."""
    depth = max(map(len, refs))
    return [[r[k] if k < len(r) else None for r in refs] for k in range(depth)]


def feed(metric, hyps, refs, cuts, flat: bool = False):
    bounds = [0, *cuts, len(hyps)]
    for a, b in zip(bounds, bounds[1:]):
        metric.update(hyps[a:b], [r[0] for r in refs[a:b]] if flat else refs[a:b])
    return metric.compute()


@FAST
@given(corpus(max_refs=1))
def test_bleu_and_chrf_one_reference_match_sacrebleu(data):
    hyps, refs, cuts = data
    assert feed(BLEU(), hyps, refs, cuts, flat=True) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, streams(refs)).score, abs=1e-9
    )
    assert feed(ChrF(), hyps, refs, cuts, flat=True) == pytest.approx(
        sacrebleu.corpus_chrf(hyps, streams(refs)).score, abs=1e-9
    )


@FAST
@given(corpus(max_refs=3))
def test_bleu_and_chrf_several_references_match_sacrebleu(data):
    hyps, refs, cuts = data
    bleu, chrf = BLEU(lowercase=True), ChrF(word_order=2)
    assert feed(bleu, hyps, refs, cuts) == pytest.approx(
        sacrebleu.BLEU(lowercase=True).corpus_score(hyps, streams(refs)).score, abs=1e-9
    )
    assert feed(chrf, hyps, refs, cuts) == pytest.approx(
        sacrebleu.CHRF(word_order=2).corpus_score(hyps, streams(refs)).score, abs=1e-9
    )
    # the per-example statistics used for bootstrap intervals give the same corpus score
    for metric in (bleu, chrf):
        stats = metric.example_stats(hyps, refs)
        assert metric.compute_from_stats(stats) == pytest.approx(metric.compute(), abs=1e-9)


@FAST
@given(corpus(max_refs=2), st.integers(0, 12))
def test_merge_equals_one_metric_fed_both_halves(data, cut):
    hyps, refs, _ = data
    for make in (BLEU, ChrF, RougeL, ExactMatch):
        a, b, whole = make(), make(), make()
        a.update(hyps[:cut], refs[:cut])
        b.update(hyps[cut:], refs[cut:])
        whole.update(hyps, refs)
        assert a.merge(b).compute() == pytest.approx(whole.compute(), abs=1e-12)


def test_signature_is_recorded():
    bleu = BLEU()
    assert bleu.signature is None
    bleu.update(["the cat sat"], [["the cat sat", "a cat sat"]])
    bleu.compute()
    reference = sacrebleu.BLEU()
    reference.corpus_score(["the cat sat"], [["the cat sat"], ["a cat sat"]])
    assert bleu.signature == str(reference.get_signature())
    assert "nrefs:2" in bleu.signature
    chrf = ChrF(word_order=2)
    chrf.update(["a"], ["a"])
    chrf.compute()
    assert "nw:2" in chrf.signature


def test_clone_keeps_options_and_empties_strings():
    bleu = BLEU(tokenize="char", name="bleu_char")
    bleu.update(["abc"], ["abd"])
    fresh = bleu.clone()
    assert fresh.name == "bleu_char" and fresh.options == {"tokenize": "char"} and fresh.hypotheses == []
    fresh.update(["abc"], ["abd"])
    assert fresh.compute() == bleu.compute()
    assert bleu.hypotheses == ["abc"]


@FAST
@given(st.lists(st.integers(0, 3), max_size=25), st.lists(st.integers(0, 3), max_size=25))
def test_lcs_bit_parallel_matches_dynamic_programming(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    assert lcs_length(a, b) == table[-1][-1]


def test_rouge_l_values():
    assert rouge_tokenize("The cat, sat_on Über-mat!") == ["the", "cat", "sat", "on", "über", "mat"]
    # lcs("the cat sat on the mat", "the cat on the mat") = 5: p = 5/6, r = 1
    assert rouge_l("the cat sat on the mat".split(), "the cat on the mat".split()) == pytest.approx(
        2 * 5 / 6 / (5 / 6 + 1)
    )
    m = RougeL()
    m.update(["The cat sat", "nothing"], [["a dog", "the CAT sat."], "something"])
    assert m.compute() == pytest.approx(0.5)  # 1.0 (best reference) and 0.0
    assert RougeL(tokenizer=list).name == "rouge_l"


def test_exact_match():
    m = ExactMatch()
    m.update([" Paris\n", "rome", "Oslo"], ["Paris", ["Rome", "Milan"], ["Bergen", "Oslo"]])
    assert m.compute() == pytest.approx(2 / 3)
    strict = ExactMatch(normalize=None)
    strict.update([" Paris"], ["Paris"])
    assert strict.compute() == 0.0


def test_errors_tell_the_fix():
    with pytest.raises(ValueError, match="got 2 hypotheses and 1 references"):
        BLEU().update(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="not a string"):
        ChrF().update(["a"], "a")
    with pytest.raises(TypeError, match="list of strings"):
        RougeL().update("a b", ["a b"])
    with pytest.raises(TypeError, match="non-empty list"):
        ExactMatch().update(["a"], [[]])
    with pytest.raises(NoDataError, match="no data"):
        BLEU().compute()
    with pytest.raises(TypeError):
        BLEU(no_such_option=1)


def test_suite_reports_sacrebleu_signatures_in_last_artifacts():
    import torch

    from finetune_lib.metrics import EvalBatch, ExactMatch, MetricSuite

    hyps, refs = ["the cat sat", "a dog ran"], ["the cat sat down", "the dog ran"]
    batch = EvalBatch("causal_lm", torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.long),
                      [{"lang": "en"}, {"lang": "fr"}], prompts=["p1", "p2"], references=refs)
    suite = MetricSuite([BLEU(lowercase=True, tokenize="char"), ChrF(word_order=2, name="chrf_pp"), ExactMatch()])
    results = suite.run([batch], generate=lambda prompts: hyps, slices="lang")
    bleu, chrf = sacrebleu.BLEU(lowercase=True, tokenize="char"), sacrebleu.CHRF(word_order=2)
    assert results["bleu"] == pytest.approx(bleu.corpus_score(hyps, [refs]).score, abs=1e-9)
    chrf.corpus_score(hyps, [refs])
    # one signature per metric that has one, under its result key; none per slice
    assert suite.last_artifacts == {"bleu_signature": str(bleu.get_signature()),
                                    "chrf_pp_signature": str(chrf.get_signature())}
    assert suite.last_artifacts["bleu_signature"].startswith("nrefs:1|case:lc|eff:no|tok:char|smooth:exp|version:")
