"""Entity-level metrics of token classification (named entities), in the CoNLL sense, and tag accuracy.

They consume word-level tag sequences (``input = "tags"``): ``update(predictions, references)`` with
one list of tags per sentence (``[["B-PER", "I-PER", "O"], ...]``), the prediction and the reference
of each sentence of the same length. `FineTuner` reads the model's prediction at the first sub-token
of each word, so the sequences are per word whatever the tokenizer.

An entity is a maximal chunk of tags, found the way the CoNLL-2000 ``conlleval`` script does (and
`seqeval`'s default mode): ``B-X`` starts a chunk of type X, ``I-X`` continues it (and starts one
after ``O`` or another type, as IOB1 data does), ``E-X`` / ``S-X`` (BIOES) end one, a change of
type ends one. A predicted entity counts as correct when its type, first and last word are all
those of a reference entity. Values equal `seqeval.metrics` (``f1_score(y_true, y_pred)``,
``precision_score``, ``recall_score``, ``accuracy_score``, ``classification_report``), which the
tests use as the reference; 0 where a ratio is undefined (seqeval's ``zero_division`` default).

The state is one ``(type, correct, predicted, reference)`` count per entity type, so memory does
not grow with the evaluation set.

Example:
    >>> f1 = EntityF1()
    >>> f1.update([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]])
    >>> f1.compute()
    0.5
    >>> extract_entities(["B-PER", "I-PER", "O", "I-LOC"])
    [('PER', 0, 1), ('LOC', 3, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Metric, NoDataError, no_data

ENTITY_AVERAGES = ("micro", "macro", "weighted")
Counts = dict[str, list[int]]  # entity type -> [correct, predicted, reference]


def _split(tag: str) -> tuple[str, str]:
    """The chunk letter and the entity type of a tag (``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "_")``)."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether the chunk before this tag ends here (conlleval's endOfChunk)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at this tag (conlleval's startOfChunk)."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def extract_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence's tags, as ``(type, first word, last word)`` (inclusive), in order.

    Chunks are read as the CoNLL ``conlleval`` script reads them (see the module docstring): IOB2,
    IOB1 and BIOES tags all give their entities.

    Example:
        >>> extract_entities(["B-PER", "I-PER", "B-PER", "O", "S-LOC", "I-ORG"])
        [('PER', 0, 1), ('PER', 2, 2), ('LOC', 4, 4), ('ORG', 5, 5)]
    """
    entities: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = _split(str(chunk))
        if _ends(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def entity_counts(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                  where: str = "update(predictions, references)") -> Counts:
    """``{type: [correct, predicted, reference]}`` over sentences (each prediction as long as its reference)."""
    check_tag_inputs(predictions, references, where)
    counts: Counts = {}
    for pred, ref in zip(predictions, references):
        found, gold = set(extract_entities(pred)), set(extract_entities(ref))
        for entity in found | gold:
            row = counts.setdefault(entity[0], [0, 0, 0])
            row[0] += entity in found and entity in gold
            row[1] += entity in found
            row[2] += entity in gold
    return counts


def check_tag_inputs(predictions: Any, references: Any, where: str) -> None:
    """Raise a clear error unless both are lists of tag lists, sentence by sentence of the same length."""
    def is_sentences(x: Any) -> bool:
        return isinstance(x, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in x)

    if not is_sentences(predictions) or not is_sentences(references):
        raise TypeError(f"{where} expects lists of tag lists, one per sentence (e.g. [['B-PER', 'O']]); got "
                        f"{type(predictions).__name__} and {type(references).__name__}.")
    if len(predictions) != len(references):
        raise ValueError(f"{where}: {len(predictions)} predicted sentences for {len(references)} references.")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise ValueError(f"{where}: sentence {i} has {len(p)} predicted tags for {len(r)} reference tags; "
                             "give one tag per word in both.")


def _merge_counts(rows: Sequence[tuple[str, int, int, int]]) -> Counts:
    merged: Counts = {}
    for type_, correct, predicted, reference in rows:
        row = merged.setdefault(type_, [0, 0, 0])
        row[0] += correct
        row[1] += predicted
        row[2] += reference
    return merged


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _prf(correct: int, predicted: int, reference: int) -> tuple[float, float, float]:
    precision, recall = _ratio(correct, predicted), _ratio(correct, reference)
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def scores(counts: Counts, average: str = "micro", entity_type: str | None = None) -> tuple[float, float, float]:
    """``(precision, recall, f1)`` from per-type counts, averaged as seqeval averages them.

    "micro" pools the counts of every type; "macro" is the plain mean of the per-type scores over
    the types seen in the predictions or the references; "weighted" weighs them by reference count.
    With `entity_type` only that type's counts are scored (0.0 when it was never seen).
    """
    if entity_type is not None:
        return _prf(*counts.get(entity_type, [0, 0, 0]))
    if average == "micro":
        return _prf(*(sum(row[k] for row in counts.values()) for k in range(3)))
    if not counts:
        return 0.0, 0.0, 0.0
    per_type = {t: _prf(*row) for t, row in counts.items()}
    if average == "macro":
        return tuple(sum(v[k] for v in per_type.values()) / len(per_type) for k in range(3))  # type: ignore[return-value]
    weights = {t: row[2] for t, row in counts.items()}
    total = sum(weights.values())
    if total == 0:  # no reference entity at all: seqeval's weighted zero_division (0)
        return 0.0, 0.0, 0.0
    return tuple(sum(per_type[t][k] * weights[t] for t in counts) / total for k in range(3))  # type: ignore[return-value]


class _EntityMetric(Metric):
    """Shared state and checks of the entity metrics (one count row per entity type)."""

    input = "tags"
    tasks = ("token_classification",)
    counts: list  # [(type, correct, predicted, reference), ...], one row per type after each update
    _which = 2  # index of the value in (precision, recall, f1)

    def __init__(self, average: str = "micro", entity_type: str | None = None, name: str | None = None) -> None:
        if average not in ENTITY_AVERAGES:
            raise ValueError(f"average must be one of {ENTITY_AVERAGES}, got {average!r}.")
        if entity_type is not None and (not isinstance(entity_type, str) or not entity_type
                                        or entity_type[:2] in ("B-", "I-", "E-", "S-")):
            raise ValueError(f"entity_type is a type such as 'PER' (without its B-/I- prefix), got {entity_type!r}.")
        super().__init__(name)
        self.average, self.entity_type = average, entity_type
        self.add_state("counts", [], reduce="cat")

    def update(self, predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> None:
        """Adds a batch of sentences: predicted and reference word-level tags, one list per sentence."""
        new = entity_counts(predictions, references, f"{type(self).__name__}.update(predictions, references)")
        merged = _merge_counts([*self.counts, *((t, *row) for t, row in new.items())])
        self.counts = [(t, *row) for t, row in sorted(merged.items())]

    def per_type(self) -> Counts:
        """``{type: [correct, predicted, reference]}`` over everything seen (the processes' rows merged)."""
        return _merge_counts(self.counts)

    def compute(self) -> float:
        return scores(self.per_type(), self.average, self.entity_type)[self._which]

    def example_stats(self, predictions: Sequence[Sequence[str]],  # type: ignore[override]
                      references: Sequence[Sequence[str]]) -> torch.Tensor | list:
        """Per sentence: ``[correct, predicted, reference]`` counts (micro average or one type: a ``[B, 3]``
        tensor), or the per-type counts (macro and weighted averages: a list of dicts)."""
        rows = [entity_counts([p], [r]) for p, r in zip(predictions, references)]
        if self.average != "micro" and self.entity_type is None:
            return rows
        if self.entity_type is not None:
            return torch.tensor([c.get(self.entity_type, [0, 0, 0]) for c in rows], dtype=torch.long).reshape(-1, 3)
        return torch.tensor([[sum(v[k] for v in c.values()) for k in range(3)] for c in rows],
                            dtype=torch.long).reshape(-1, 3)

    def compute_from_stats(self, stats: torch.Tensor | list) -> float:
        """The value over the sentences whose `example_stats` rows are given (a bootstrap resample)."""
        if isinstance(stats, torch.Tensor):
            correct, predicted, reference = stats.sum(0).tolist() if len(stats) else (0, 0, 0)
            return _prf(correct, predicted, reference)[self._which]
        if not len(stats):
            raise NoDataError("no sentences in this resample")
        merged = _merge_counts([(t, *row) for c in stats for t, row in c.items()])
        return scores(merged, self.average, self.entity_type)[self._which]


class EntityPrecision(_EntityMetric):
    """Entity-level precision: correct predicted entities / predicted entities (`seqeval.metrics.precision_score`).

    Args:
        average: "micro" (pool every type; the CoNLL score), "macro" or "weighted" (by reference count).
        entity_type: score one type only (e.g. "PER"); put several in a suite with their own names.
        name: result key (default ``"precision"``).

    Example:
        >>> m = EntityPrecision()
        >>> m.update([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
        >>> m.compute()
        0.5
    """

    name = "precision"
    _which = 0


class EntityRecall(_EntityMetric):
    """Entity-level recall: correct predicted entities / reference entities (`seqeval.metrics.recall_score`).

    Args: as `EntityPrecision` (default name ``"recall"``).

    Example:
        >>> m = EntityRecall(entity_type="PER", name="recall_PER")
        >>> m.update([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "B-PER"]])
        >>> m.compute()
        0.5
    """

    name = "recall"
    _which = 1


class EntityF1(_EntityMetric):
    """Entity-level F1, the CoNLL shared tasks' score (`seqeval.metrics.f1_score`).

    Args: as `EntityPrecision` (default name ``"f1"``).

    Example:
        >>> m = EntityF1()
        >>> m.update([["B-ORG", "I-ORG", "O"]], [["B-ORG", "I-ORG", "O"]])
        >>> m.compute()
        1.0
    """

    name = "f1"
    _which = 2


class EntityReport(_EntityMetric):
    """Per-type precision, recall, F1 and support, and the averages: `seqeval`'s ``classification_report(...,
    output_dict=True)``. Not a number, so `MetricSuite` puts it in ``last_artifacts["entities"]``.

    Example:
        >>> m = EntityReport()
        >>> m.update([["B-PER", "O"]], [["B-PER", "O"]])
        >>> m.compute()["PER"]
        {'precision': 1.0, 'recall': 1.0, 'f1-score': 1.0, 'support': 1}
    """

    name = "entities"
    scalar = False

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)

    def compute(self) -> dict[str, dict[str, float]]:  # type: ignore[override]
        counts = self.per_type()
        report: dict[str, dict[str, float]] = {}
        for type_ in sorted(counts):
            p, r, f = _prf(*counts[type_])
            report[type_] = {"precision": p, "recall": r, "f1-score": f, "support": counts[type_][2]}
        support = sum(row[2] for row in counts.values())
        for average in ENTITY_AVERAGES:
            p, r, f = scores(counts, average)
            report[f"{average} avg"] = {"precision": p, "recall": r, "f1-score": f, "support": support}
        return report


class TagAccuracy(Metric):
    """Share of words whose predicted tag equals the reference tag (`seqeval.metrics.accuracy_score`).

    Example:
        >>> m = TagAccuracy()
        >>> m.update([["B-PER", "O", "O"]], [["B-PER", "I-PER", "O"]])
        >>> round(m.compute(), 4)
        0.6667
    """

    name = "accuracy"
    input = "tags"
    tasks = ("token_classification",)
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.add_state("correct", 0)
        self.add_state("total", 0)

    def _rows(self, predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> torch.Tensor:
        check_tag_inputs(predictions, references, f"{type(self).__name__}.update(predictions, references)")
        return torch.tensor([[sum(a == b for a, b in zip(p, r)), len(r)] for p, r in zip(predictions, references)],
                            dtype=torch.long).reshape(-1, 2)

    def update(self, predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> None:
        """Adds a batch of sentences: predicted and reference word-level tags, one list per sentence."""
        rows = self._rows(predictions, references).sum(0)
        self.correct += rows[0]
        self.total += rows[1]

    def compute(self) -> float:
        if int(self.total) == 0:
            raise no_data(self, " (only empty sentences)")
        return int(self.correct) / int(self.total)

    def example_stats(self, predictions: Sequence[Sequence[str]],  # type: ignore[override]
                      references: Sequence[Sequence[str]]) -> torch.Tensor:
        """``[B, 2]`` rows: words tagged right and words of each sentence."""
        return self._rows(predictions, references)

    def compute_from_stats(self, stats: torch.Tensor) -> float:  # type: ignore[override]
        correct, total = stats.sum(0).tolist() if len(stats) else (0, 0)
        if total == 0:
            raise NoDataError("no words in this resample")
        return correct / total


__all__ = ["ENTITY_AVERAGES", "EntityF1", "EntityPrecision", "EntityRecall", "EntityReport", "TagAccuracy",
           "entity_counts", "extract_entities", "scores"]
