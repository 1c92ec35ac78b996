"""Multi-label metrics: F1 (micro, macro, samples, weighted), Hamming loss and subset accuracy.

They consume 0/1 indicator matrices (``input = "indicators"``): ``update(preds, target)`` with
``preds`` and ``target`` of shape ``[N, L]`` (tensors or nested lists; one column per label). For a
multi-label `FineTuner`, ``preds`` are the labels whose probability reached their threshold. Values
agree with scikit-learn on the same matrices (`f1_score(average=...)`, `hamming_loss`,
`accuracy_score`), with its default ``zero_division`` (0 where undefined).

Example:
    >>> m = MultiLabelF1(average="micro")
    >>> m.update([[1, 0, 1], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]])
    >>> round(m.compute(), 4)
    0.6667
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Metric, no_data
from .state import pad_to

MULTILABEL_AVERAGES = ("micro", "macro", "samples", "weighted")


def indicator_matrices(metric: Metric, preds: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`preds` and `target` as int64 CPU matrices `[N, L]` of 0/1, checked."""
    where = f"{type(metric).__name__}.update(preds, target)"
    preds, target = torch.as_tensor(preds), torch.as_tensor(target)
    if preds.dim() == 1 and target.dim() == 1:  # a single example
        preds, target = preds[None], target[None]
    if preds.shape != target.shape or preds.dim() != 2:
        raise ValueError(f"{where} expects two 0/1 indicator matrices of the same shape [N, L] (one column per "
                         f"label); got preds {tuple(preds.shape)} and target {tuple(target.shape)}.")
    preds, target = preds.cpu(), target.cpu()
    for t, what in ((preds, "preds"), (target, "target")):
        if t.numel() and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{where}: {what} must hold only 0 and 1 (threshold probabilities first), got "
                             f"{t.reshape(-1)[:5].tolist()} ...")
    return preds.long(), target.long()


class _IndicatorMetric(Metric):
    """Shared per-example statistics of indicator metrics: each example's preds and target rows."""

    input = "indicators"

    def example_stats(self, *inputs: Any) -> torch.Tensor:
        preds, target = indicator_matrices(self, *inputs)
        return torch.cat([preds, target], 1).to(torch.int8)

    def compute_from_stats(self, stats: Any) -> float:
        scratch = self.clone()
        half = stats.shape[1] // 2
        scratch.update(stats[:, :half], stats[:, half:])
        return scratch.compute()


class MultiLabelF1(_IndicatorMetric):
    """F1 over indicator matrices (`sklearn.metrics.f1_score` on multi-label input).

    Args:
        average: ``"micro"`` (global counts over every label), ``"macro"`` (the mean of the per-label F1
            over all L labels, a label never true nor predicted counting 0, as scikit-learn does),
            ``"samples"`` (the mean over examples of each example's F1) or ``"weighted"`` (per-label F1
            weighted by the label's support).
        name: result key (default ``"f1_<average>"``).

    Example:
        >>> m = MultiLabelF1(average="samples")
        >>> m.update([[1, 0, 1], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]])
        >>> round(m.compute(), 4)
        0.6667
    """

    name = "f1"
    tp: torch.Tensor
    pred_count: torch.Tensor
    true_count: torch.Tensor
    sample_f1: torch.Tensor
    examples: torch.Tensor

    def __init__(self, average: str = "micro", name: str | None = None) -> None:
        if average not in MULTILABEL_AVERAGES:
            raise ValueError(f"MultiLabelF1: unknown average={average!r}; use one of {MULTILABEL_AVERAGES}")
        super().__init__(name if name is not None else f"f1_{average}")
        self.average = average
        self.add_state("tp", torch.zeros(0, dtype=torch.int64))
        self.add_state("pred_count", torch.zeros(0, dtype=torch.int64))
        self.add_state("true_count", torch.zeros(0, dtype=torch.int64))
        self.add_state("sample_f1", 0.0)
        self.add_state("examples", 0)

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predicted and true indicator rows."""
        preds, target = indicator_matrices(self, preds, target)
        size = max(preds.shape[1], self.tp.shape[0])
        self.tp = pad_to(self.tp, (size,)) + pad_to((preds & target).sum(0), (size,))
        self.pred_count = pad_to(self.pred_count, (size,)) + pad_to(preds.sum(0), (size,))
        self.true_count = pad_to(self.true_count, (size,)) + pad_to(target.sum(0), (size,))
        both = (preds & target).sum(1).double()
        den = (preds.sum(1) + target.sum(1)).double()
        self.sample_f1 += torch.where(den > 0, 2 * both / den.clamp(min=1), torch.zeros_like(den)).sum()
        self.examples += preds.shape[0]

    def compute(self) -> float:
        """The averaged F1 in [0, 1]."""
        if int(self.examples) == 0:
            raise no_data(self)
        if self.average == "samples":
            return float(self.sample_f1) / int(self.examples)
        tp, pred, true = (x.double() for x in (self.tp, self.pred_count, self.true_count))
        if self.average == "micro":
            den = pred.sum() + true.sum()
            return float(2 * tp.sum() / den) if float(den) else 0.0
        per_label = torch.where(pred + true > 0, 2 * tp / (pred + true).clamp(min=1), torch.zeros_like(tp))
        if self.average == "macro":
            return float(per_label.mean())
        return float((per_label * true).sum() / true.sum()) if float(true.sum()) else 0.0


class HammingLoss(_IndicatorMetric):
    """The share of (example, label) entries predicted wrong (`sklearn.metrics.hamming_loss`); lower is better.

    Example:
        >>> m = HammingLoss()
        >>> m.update([[1, 0, 1], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]])
        >>> round(m.compute(), 4)
        0.3333
    """

    name = "hamming_loss"
    higher_is_better = False
    wrong: torch.Tensor
    entries: torch.Tensor

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.add_state("wrong", 0)
        self.add_state("entries", 0)

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predicted and true indicator rows."""
        preds, target = indicator_matrices(self, preds, target)
        self.wrong += (preds != target).sum()
        self.entries += target.numel()

    def compute(self) -> float:
        """Hamming loss in [0, 1]."""
        if int(self.entries) == 0:
            raise no_data(self)
        return int(self.wrong) / int(self.entries)


class SubsetAccuracy(_IndicatorMetric):
    """The share of examples whose whole label set is predicted exactly (`sklearn.metrics.accuracy_score`
    on indicator matrices).

    Example:
        >>> m = SubsetAccuracy()
        >>> m.update([[1, 0, 1], [0, 1, 0]], [[1, 0, 1], [0, 1, 1]])
        >>> m.compute()
        0.5
    """

    name = "subset_accuracy"
    exact: torch.Tensor
    total: torch.Tensor

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.add_state("exact", 0)
        self.add_state("total", 0)

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predicted and true indicator rows."""
        preds, target = indicator_matrices(self, preds, target)
        self.exact += (preds == target).all(1).sum()
        self.total += target.shape[0]

    def compute(self) -> float:
        """Subset accuracy in [0, 1]."""
        if int(self.total) == 0:
            raise no_data(self)
        return int(self.exact) / int(self.total)


__all__ = ["MULTILABEL_AVERAGES", "HammingLoss", "MultiLabelF1", "SubsetAccuracy", "indicator_matrices"]
