"""Generation metrics over text: BLEU, chrF, ROUGE-L and exact match.

They consume ``update(hypotheses, references)``: ``hypotheses`` a list of strings, ``references``
one entry *per hypothesis*, either a string (one reference) or a list of strings (several
references; the count may vary between hypotheses). Note that sacrebleu's own functions take the
transpose (one list per reference *stream*); these metrics do the conversion.

BLEU and chrF are sacrebleu's corpus scores (0-100 scale) and keep the strings until `compute()`;
ROUGE-L and exact match are fractions in [0, 1] and keep two numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from sacrebleu.metrics import BLEU as _SacreBLEU
from sacrebleu.metrics import CHRF as _SacreCHRF

from .base import Metric, NoDataError, no_data


def as_hypotheses(metric: Metric, hypotheses: Any) -> list[str]:
    """`hypotheses` as a list of strings, checked."""
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise TypeError(f"{type(metric).__name__}.update expects hypotheses as a list of strings")
    return list(hypotheses)


def as_references(metric: Metric, references: Any, n: int) -> list[list[str]]:
    """`references` as one list of reference strings per hypothesis, checked."""
    where = f"{type(metric).__name__}.update(hypotheses, references)"
    if isinstance(references, str):
        raise TypeError(f"{where}: references must be a list (one entry per hypothesis), not a string")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(refs) != n:
        raise ValueError(
            f"{where} got {n} hypotheses and {len(refs)} references; pass one entry per hypothesis: a reference "
            "string, or a list of reference strings (sacrebleu's reference streams must be transposed)."
        )
    for r in refs:
        if not r or not all(isinstance(x, str) for x in r):
            raise TypeError(
                f"{where}: each entry of references must be a string or a non-empty list of strings, got {r!r}"
            )
    return refs


def reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """Per-hypothesis references transposed to sacrebleu's streams (None where a hypothesis has fewer)."""
    depth = max(len(r) for r in references)
    return [[r[k] if k < len(r) else None for r in references] for k in range(depth)]


class _SacreMetric(Metric):
    """A sacrebleu corpus metric: keeps the strings, scores them with sacrebleu in `compute()`."""

    input = "text"
    _scorer_cls: Any = None
    hypotheses: list[str]
    references: list[list[str]]

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(name)
        self.options = dict(options)
        self._scorer = self._scorer_cls(**self.options)  # fails early on a bad option
        self.signature: str | None = None
        self.add_state("hypotheses", [], reduce="cat")
        self.add_state("references", [], reduce="cat")

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles rebuild the scorer
        return {**self.__dict__, "_scorer": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scorer = self._scorer_cls(**self.options)

    def update(self, hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> None:
        """Adds hypotheses and their references (a string or a list of strings per hypothesis)."""
        hyps = as_hypotheses(self, hypotheses)
        self.references.extend(as_references(self, references, len(hyps)))
        self.hypotheses.extend(hyps)

    def compute(self) -> float:
        """sacrebleu's corpus score (0-100); also sets `signature`."""
        if not self.hypotheses:
            raise no_data(self)
        scorer = self._scorer_cls(**self.options)
        score = scorer.corpus_score(self.hypotheses, reference_streams(self.references))
        self.signature = str(scorer.get_signature())
        return float(score.score)

    def example_stats(self, hypotheses: Sequence[str], references: Any) -> torch.Tensor | list:
        """sacrebleu's per-sentence sufficient statistics (the corpus score is a function of their sum)."""
        hyps = as_hypotheses(self, hypotheses)
        refs = as_references(self, references, len(hyps))
        if not hyps or not hasattr(self._scorer, "_extract_corpus_statistics"):
            return super().example_stats(hyps, refs)  # fallback: keep the strings
        return torch.tensor(self._scorer._extract_corpus_statistics(hyps, reference_streams(refs)))

    def compute_from_stats(self, stats: torch.Tensor | list) -> float:
        """Corpus score of the examples whose `example_stats` rows are given."""
        if isinstance(stats, list):
            return super().compute_from_stats(stats)
        if not len(stats):
            raise NoDataError("no hypotheses in this resample")
        return float(self._scorer._compute_score_from_stats(stats.sum(0).tolist()).score)


class BLEU(_SacreMetric):
    """sacrebleu's corpus BLEU (0-100).

    Args:
        name: result key (default ``"bleu"``).
        **options: passed to `sacrebleu.metrics.BLEU` (``lowercase``, ``tokenize``,
            ``smooth_method``, ``smooth_value``, ``max_ngram_order``, ``effective_order``, ...).

    After `compute()`, `signature` holds sacrebleu's signature string (the settings and version that
    make the score comparable); `MetricSuite` reports it as ``last_artifacts["<name>_signature"]``,
    and the model card and training report list it with the metrics.

    Example:
        >>> m = BLEU()
        >>> m.update(["the cat sat on the mat"], [["the cat sat on the mat", "a cat was on the mat"]])
        >>> round(m.compute(), 6), m.signature.startswith("nrefs:2")
        (100.0, True)
    """

    name = "bleu"
    _scorer_cls = _SacreBLEU


class ChrF(_SacreMetric):
    """sacrebleu's corpus chrF (0-100); ``ChrF(word_order=2)`` is chrF++.

    Like `BLEU`, it records sacrebleu's `signature` at `compute()`.

    Args:
        name: result key (default ``"chrf"``).
        **options: passed to `sacrebleu.metrics.CHRF` (``char_order``, ``word_order``, ``beta``,
            ``lowercase``, ``whitespace``, ...).

    Example:
        >>> m = ChrF()
        >>> m.update(["the cat sat"], ["the cat sat"])
        >>> m.compute()
        100.0
    """

    name = "chrf"
    _scorer_cls = _SacreCHRF


_WORD = re.compile(r"[^\W_]+")


def rouge_tokenize(text: str) -> list[str]:
    """Lowercased runs of letters and digits (rouge-score's default tokenizer, extended to Unicode)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyro 2004): O(len(a) * len(b) / 64)."""
    masks: dict[Any, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(hypothesis: list[str], reference: list[str]) -> float:
    """ROUGE-L F-measure of two token lists."""
    lcs = lcs_length(hypothesis, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


class RougeL(Metric):
    """Mean over examples of the ROUGE-L F-measure (longest common subsequence of tokens), in [0, 1].

    Matches rouge-score's ``rougeL`` fmeasure without stemming on ASCII text; with several
    references, each example takes its best one.

    Args:
        tokenizer: ``str -> list[str]``; default `rouge_tokenize`.
        name: result key (default ``"rouge_l"``).

    Example:
        >>> m = RougeL()
        >>> m.update(["the cat sat"], ["the cat sat down"])
        >>> round(m.compute(), 4)
        0.8571
    """

    name = "rouge_l"
    input = "text"
    f_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, tokenizer: Callable[[str], list[str]] | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.tokenizer = tokenizer or rouge_tokenize
        self.add_state("f_sum", 0.0)
        self.add_state("count", 0)

    def _scores(self, hypotheses: Sequence[str], references: Any) -> list[float]:
        hyps = as_hypotheses(self, hypotheses)
        refs = as_references(self, references, len(hyps))
        tok = self.tokenizer
        return [max(rouge_l(tok(h), tok(r)) for r in rs) for h, rs in zip(hyps, refs)]

    def update(self, hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> None:
        """Adds hypotheses and their references (a string or a list of strings per hypothesis)."""
        scores = self._scores(hypotheses, references)
        self.f_sum += math.fsum(scores)
        self.count += len(scores)

    def compute(self) -> float:
        """Mean ROUGE-L F-measure."""
        if int(self.count) == 0:
            raise no_data(self)
        return float(self.f_sum) / int(self.count)

    def example_stats(self, hypotheses: Sequence[str], references: Any) -> torch.Tensor:
        """``[B, 1]`` float64: each example's ROUGE-L."""
        return torch.tensor(self._scores(hypotheses, references), dtype=torch.float64).view(-1, 1)

    def compute_from_stats(self, stats: torch.Tensor) -> float:  # type: ignore[override]
        """Mean ROUGE-L of the given examples."""
        if not len(stats):
            raise NoDataError("no examples in this resample")
        return float(stats.mean())


def _strip(text: str) -> str:
    return text.strip()


class ExactMatch(Metric):
    """Fraction of hypotheses equal to (one of) their references after `normalize`, in [0, 1].

    Args:
        normalize: applied to hypotheses and references before comparing; default strips surrounding
            whitespace; pass ``None`` for a byte-exact comparison.
        name: result key (default ``"exact_match"``).

    Example:
        >>> m = ExactMatch()
        >>> m.update(["Paris ", "Rome"], [["Paris", "paris"], "Milan"])
        >>> m.compute()
        0.5
    """

    name = "exact_match"
    input = "text"
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, normalize: Callable[[str], str] | None = _strip, name: str | None = None) -> None:
        super().__init__(name)
        self.normalize = normalize
        self.add_state("correct", 0)
        self.add_state("total", 0)

    def _matches(self, hypotheses: Sequence[str], references: Any) -> list[int]:
        hyps = as_hypotheses(self, hypotheses)
        refs = as_references(self, references, len(hyps))
        norm = self.normalize or (lambda s: s)
        return [int(any(norm(h) == norm(r) for r in rs)) for h, rs in zip(hyps, refs)]

    def update(self, hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> None:
        """Adds hypotheses and their references (a string or a list of strings per hypothesis)."""
        matches = self._matches(hypotheses, references)
        self.correct += sum(matches)
        self.total += len(matches)

    def compute(self) -> float:
        """Exact-match rate."""
        if int(self.total) == 0:
            raise no_data(self)
        return int(self.correct) / int(self.total)

    def example_stats(self, hypotheses: Sequence[str], references: Any) -> torch.Tensor:
        """``[B, 1]`` int64: 1 where the example matches."""
        return torch.tensor(self._matches(hypotheses, references), dtype=torch.int64).view(-1, 1)

    def compute_from_stats(self, stats: torch.Tensor) -> float:  # type: ignore[override]
        """Exact-match rate of the given examples."""
        if not len(stats):
            raise NoDataError("no examples in this resample")
        return float(stats.double().mean())
