"""Two more tasks over `{"text", "label"}` records with a sequence head: multi-label classification and
regression. They follow `finetune_lib.tasks.Task`'s contract: a *sum* over targets divided by the
normalizer the loop passes in.

* ``"multilabel_classification"``: a record's ``label`` is a non-empty list of label names (or ids).
  The head has one logit per label; the loss is binary cross-entropy with logits summed over
  examples x labels, so the normalizer counts examples x labels: the loss of a whole batch equals
  ``torch.nn.BCEWithLogitsLoss()`` (its mean over every entry), as transformers computes it.
  A label is predicted when its probability reaches its threshold (0.5 by default, per label).
* ``"regression"``: a record's ``label`` is a finite number. The head has one output; the loss is
  the squared error (or the Huber loss) summed over examples, divided by the examples. With target
  scaling the head learns standardized targets, ``(y - mean) / std``, and predictions are mapped
  back to the user's units (and folded into the saved head).

Example:
    >>> from finetune_lib.tasks import get_task
    >>> task = get_task("regression")
    >>> task.has_labels, task.has_classes, task.problem_type
    (True, False, 'regression')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from .task_base import Task

DEFAULT_THRESHOLD = 0.5
REGRESSION_LOSSES = ("mse", "huber")


class MultiLabelTask(Task):
    """Multi-label classification: any number of labels per text, one sigmoid per label.

    Attributes:
        thresholds: the probability at or above which each label is predicted (a tensor of one value
            per label); None means 0.5 for every label.
        pos_weight: BCE's weight of the positive term per label (`class_weights`), or None.
    """

    problem_type = "multi_label_classification"

    def __init__(self) -> None:
        super().__init__("multilabel_classification", auto_class=AutoModelForSequenceClassification,
                         label_kind="classes", metric_inputs=("indicators", "logits"))
        self.thresholds: torch.Tensor | None = None
        self.thresholds_tuned = False  # set by tune_thresholds=True
        self.pos_weight: torch.Tensor | None = None

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Examples x labels: every entry of the label matrix carries a loss."""
        return int(batch["labels"].numel())

    def aligned_loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """Summed binary cross-entropy with logits over every (example, label) entry, in float32.

        In training (`smoothing=True`) label smoothing moves each target toward 0.5
        (``y * (1 - eps) + eps / 2``) and `pos_weight` weighs the positive terms; the evaluation loss is plain.
        """
        target = labels.float()
        eps = self.label_smoothing if smoothing else 0.0
        if eps:
            target = target * (1 - eps) + eps / 2
        weight = self.pos_weight.to(logits.device) if smoothing and self.pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight, reduction="sum")

    def threshold_tensor(self, num_labels: int, device: torch.device) -> torch.Tensor:
        """The per-label thresholds (0.5 where none were set)."""
        if self.thresholds is None:
            return torch.full((num_labels,), DEFAULT_THRESHOLD, device=device)
        return self.thresholds.to(device)

    def details(self, names: Sequence[Any]) -> dict[str, Any]:
        """The BCE's `pos_weight` (class weights) and the thresholds, for the model card and the report."""
        out: dict[str, Any] = {}
        if self.pos_weight is not None:
            out["class weights (BCE pos_weight)"] = _by_name(names, self.pos_weight.tolist())
        how = "tuned on the validation data" if self.thresholds_tuned else "fixed"
        out[f"thresholds ({how}; saved in config.json as finetune_lib_thresholds; pipeline() does not apply "
            "them)"] = _by_name(names, self.threshold_tensor(len(names), torch.device("cpu")).tolist())
        return out

    def metric_predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """The 0/1 indicator matrix `[B, L]`: probability >= the label's threshold."""
        return (logits.float().sigmoid() >= self.threshold_tensor(logits.shape[-1], logits.device)).long()

    def predict_rows(self, logits: torch.Tensor, names: Sequence[Any]) -> list[Any]:
        """Per text ``{"labels": [names predicted], "scores": {name: probability}}``."""
        probs = logits.float().sigmoid()
        chosen = probs >= self.threshold_tensor(probs.shape[-1], probs.device)
        names = list(names) or list(range(probs.shape[-1]))
        return [{"labels": [names[j] for j in range(len(names)) if chosen[i, j]],
                 "scores": {names[j]: float(probs[i, j]) for j in range(len(names))}} for i in range(len(probs))]


class RegressionTask(Task):
    """Regression: one number per text.

    Attributes:
        loss_kind: "mse" (squared error) or "huber" (`torch.nn.functional.huber_loss` with `huber_delta`).
        huber_delta: where the Huber loss turns from quadratic to linear (in the units the head learns:
            standardized units with target scaling).
        target_mean, target_std: the head learns ``(y - target_mean) / target_std``; (0, 1) without scaling,
            and for a saved model, whose head has them folded in.
    """

    problem_type = "regression"

    def __init__(self) -> None:
        super().__init__("regression", auto_class=AutoModelForSequenceClassification, label_kind="value",
                         metric_inputs=("values", "logits"))
        self.loss_kind = "mse"
        self.huber_delta = 1.0
        self.target_mean = 0.0
        self.target_std = 1.0

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["labels"].shape[0])

    def aligned_loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """Summed squared error (or Huber loss) between the head's output and the (scaled) targets, float32."""
        pred = logits.float().reshape(-1)
        target = (labels.float().reshape(-1) - self.target_mean) / self.target_std
        if self.loss_kind == "huber":
            return F.huber_loss(pred, target, reduction="sum", delta=self.huber_delta)
        return F.mse_loss(pred, target, reduction="sum")

    def details(self, names: Sequence[Any]) -> dict[str, Any]:
        """The loss and the target scaling, for the model card and the report."""
        out: dict[str, Any] = {"loss": f"Huber (delta {self.huber_delta:g})" if self.loss_kind == "huber"
                               else "mean squared error"}
        if (self.target_mean, self.target_std) != (0.0, 1.0):
            out["target scaling (folded into the saved head)"] = {"mean": float(f"{self.target_mean:.6g}"),
                                                                   "std": float(f"{self.target_std:.6g}")}
        return out

    def metric_predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predictions in the targets' units, `[B]` (float64)."""
        return logits.double().reshape(-1) * self.target_std + self.target_mean

    def predict_rows(self, logits: torch.Tensor, names: Sequence[Any]) -> list[Any]:
        """One float per text, in the targets' units."""
        return [float(v) for v in self.metric_predictions(logits)]


def _by_name(names: Sequence[Any], values: list[float]) -> dict[str, float]:
    return {str(n): float(f"{v:.6g}") for n, v in zip(names, values)}


__all__ = ["DEFAULT_THRESHOLD", "REGRESSION_LOSSES", "MultiLabelTask", "RegressionTask"]
