"""Classification metrics: accuracy, precision, recall, F1 and the confusion matrix.

They consume class ids (``input = "classes"``): ``update(preds, target)`` with ``preds`` and
``target`` of the same shape (tensors or lists of ints), or ``preds`` as scores ``[N, C]`` (argmax is
taken) with ``target`` ``[N]``. The number of classes need not be known up front: per-class counts
grow with the largest class id seen. Values agree with scikit-learn (`accuracy_score`,
`precision_score`, ..., ``zero_division`` behaving as its default: 0 where undefined).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Metric, no_data
from .state import pad_to

AVERAGES = ("binary", "macro", "micro", "weighted")


def class_ids(
    metric: Metric, preds: Any, target: Any, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`preds` and `target` as flat int64 CPU tensors of class ids, checked, with `ignore_index`
    entries of `target` dropped."""
    where = f"{type(metric).__name__}.update(preds, target)"
    try:
        preds, target = torch.as_tensor(preds), torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"{where} expects integer class ids (tensors or lists); map string labels to ids first ({e})"
        ) from e
    if preds.dim() == target.dim() + 1 and preds.is_floating_point():
        preds = preds.argmax(-1)  # scores [N, C] -> ids [N]
    if preds.shape != target.shape:
        raise ValueError(
            f"{where} expects preds and target of the same shape (class ids, e.g. [N]) or preds as scores "
            f"[N, C] with target [N]; got preds {tuple(preds.shape)} and target {tuple(target.shape)}."
        )
    preds, target = preds.reshape(-1).cpu(), target.reshape(-1).cpu()
    for t, what in ((preds, "preds"), (target, "target")):
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError(
                f"{where}: {what} must hold integer class ids, got non-integer floats ({t[:5].tolist()} ...)"
            )
    preds, target = preds.long(), target.long()
    if ignore_index is not None:
        keep = target != ignore_index
        preds, target = preds[keep], target[keep]
    if target.numel() and min(int(preds.min()), int(target.min())) < 0:
        raise ValueError(
            f"{where}: class ids must be >= 0, got {min(int(preds.min()), int(target.min()))}; if negative ids "
            "mark entries to skip, pass ignore_index=<that id>."
        )
    return preds, target


def _grow(t: torch.Tensor, size: int) -> torch.Tensor:
    return pad_to(t, (max(size, t.shape[0]),))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where den == 0 (scikit-learn's default zero_division)."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


class Accuracy(Metric):
    """Fraction of examples whose predicted class equals the target (`sklearn.metrics.accuracy_score`).

    Args:
        ignore_index: target id to skip (e.g. -100 for token-level use), or None.
        name: result key (default ``"accuracy"``).

    Example:
        >>> m = Accuracy()
        >>> m.update([0, 2, 1], [0, 1, 1])
        >>> round(m.compute(), 4)
        0.6667
    """

    name = "accuracy"
    input = "classes"
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, ignore_index: int | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.ignore_index = ignore_index
        self.add_state("correct", 0)
        self.add_state("total", 0)

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predicted and true class ids."""
        preds, target = class_ids(self, preds, target, self.ignore_index)
        self.correct += (preds == target).sum()
        self.total += target.numel()

    def compute(self) -> float:
        """Accuracy in [0, 1]."""
        if int(self.total) == 0:
            raise no_data(self)
        return int(self.correct) / int(self.total)


class _PerClassMetric(Metric):
    """Shared state of precision / recall / F1: per-class true positives, predicted and true counts."""

    input = "classes"
    tp: torch.Tensor
    pred_count: torch.Tensor
    true_count: torch.Tensor

    def __init__(
        self, average: str = "binary", ignore_index: int | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        if average not in AVERAGES:
            raise ValueError(f"{type(self).__name__}: unknown average={average!r}; use one of {AVERAGES}")
        self.average = average
        self.ignore_index = ignore_index
        self.add_state("tp", torch.zeros(0, dtype=torch.int64))
        self.add_state("pred_count", torch.zeros(0, dtype=torch.int64))
        self.add_state("true_count", torch.zeros(0, dtype=torch.int64))

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predicted and true class ids."""
        preds, target = class_ids(self, preds, target, self.ignore_index)
        if not target.numel():
            return
        top = max(int(preds.max()), int(target.max()))
        if self.average == "binary" and top > 1:
            raise ValueError(
                f"{type(self).__name__}(average='binary') needs class ids in {{0, 1}} (1 is the positive class), "
                f"got class id {top}; for more classes use average='macro', 'micro' or 'weighted'."
            )
        size = max(top + 1, self.tp.shape[0])
        self.tp = _grow(self.tp, size) + torch.bincount(target[preds == target], minlength=size)
        self.pred_count = _grow(self.pred_count, size) + torch.bincount(preds, minlength=size)
        self.true_count = _grow(self.true_count, size) + torch.bincount(target, minlength=size)

    @staticmethod
    def _score(tp: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute(self) -> float:
        """The averaged score in [0, 1]."""
        size = max(self.tp.shape[0], self.pred_count.shape[0], self.true_count.shape[0], 2)
        tp, pred, true = (_grow(x, size).double() for x in (self.tp, self.pred_count, self.true_count))
        if float(true.sum()) == 0:
            raise no_data(self)
        if self.average == "micro":
            return float(self._score(tp.sum(), pred.sum(), true.sum()))
        if self.average == "binary":
            return float(self._score(tp[1], pred[1], true[1]))
        present = (pred + true) > 0  # scikit-learn averages over the labels present in preds or target
        scores = self._score(tp[present], pred[present], true[present])
        if self.average == "macro":
            return float(scores.mean())
        return float((scores * true[present]).sum() / true.sum())  # weighted by support


class Precision(_PerClassMetric):
    """Precision, tp / (tp + fp) (`sklearn.metrics.precision_score`).

    Args:
        average: ``"binary"`` (class 1 is positive; ids must be 0/1), ``"macro"`` (unweighted mean
            over the classes present in preds or target), ``"micro"`` (global counts) or
            ``"weighted"`` (mean weighted by each class's support).
        ignore_index: target id to skip, or None.
        name: result key (default ``"precision"``).

    Example:
        >>> m = Precision(average="macro")
        >>> m.update([0, 1, 1, 2], [0, 1, 2, 2])
        >>> round(m.compute(), 4)
        0.8333
    """

    name = "precision"

    @staticmethod
    def _score(tp: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        return _ratio(tp, pred)


class Recall(_PerClassMetric):
    """Recall, tp / (tp + fn) (`sklearn.metrics.recall_score`); arguments as for `Precision`.

    Example:
        >>> m = Recall()
        >>> m.update([1, 0, 1, 1], [1, 1, 0, 1])
        >>> round(m.compute(), 4)
        0.6667
    """

    name = "recall"

    @staticmethod
    def _score(tp: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        return _ratio(tp, true)


class F1(_PerClassMetric):
    """F1, 2 tp / (2 tp + fp + fn) per class, then averaged (`sklearn.metrics.f1_score`); arguments
    as for `Precision` (``macro`` averages the per-class F1, as scikit-learn does).

    Example:
        >>> m = F1(average="macro")
        >>> m.update([0, 1, 1, 2], [0, 1, 2, 2])
        >>> round(m.compute(), 4)
        0.7778
    """

    name = "f1"

    @staticmethod
    def _score(tp: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        return _ratio(2 * tp, pred + true)


class ConfusionMatrix(Metric):
    """Counts of (true class, predicted class) pairs.

    `compute()` returns a nested list ``m`` where ``m[i][j]`` counts examples of true class ``i``
    predicted as ``j``, for class ids ``0 .. K-1`` with ``K`` = `num_classes`, or else the largest
    id seen + 1 (`sklearn.metrics.confusion_matrix` with ``labels=range(K)``). Not a scalar, so
    `MetricSuite` puts it in `last_artifacts`, not in its flat dict.

    Args:
        num_classes: fixes K (ids >= K are an error); None grows with the data.
        ignore_index: target id to skip, or None.
        name: result key (default ``"confusion_matrix"``).

    Example:
        >>> m = ConfusionMatrix()
        >>> m.update([0, 1, 1], [0, 0, 1])
        >>> m.compute()
        [[1, 1], [0, 1]]
    """

    name = "confusion_matrix"
    input = "classes"
    scalar = False
    matrix: torch.Tensor

    def __init__(
        self, num_classes: int | None = None, ignore_index: int | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        k = num_classes or 0
        self.add_state("matrix", torch.zeros(k, k, dtype=torch.int64))

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predicted and true class ids."""
        preds, target = class_ids(self, preds, target, self.ignore_index)
        top = max(int(preds.max()), int(target.max())) + 1 if target.numel() else 0
        if self.num_classes is not None and top > self.num_classes:
            raise ValueError(
                f"ConfusionMatrix(num_classes={self.num_classes}) got class id {top - 1}; raise num_classes or "
                "leave it None to grow with the data."
            )
        k = max(top, self.matrix.shape[0])
        counts = torch.bincount(target * k + preds, minlength=k * k).view(k, k)
        self.matrix = pad_to(self.matrix, (k, k)) + counts

    def compute(self) -> list[list[int]]:
        """The matrix as a list of rows (true classes) of counts per predicted class."""
        if int(self.matrix.sum()) == 0 and self.num_classes is None:
            raise no_data(self)
        return self.matrix.tolist()
