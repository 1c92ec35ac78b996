"""The base of every task (`Task`): what differs per task is its model class, forward pass, loss and how
its targets are counted. The tasks themselves, and `get_task`, are in `finetune_lib.tasks`; this module
imports none of them, so task modules (`finetune_lib.sequence_tasks`, ...) build on it without an import
cycle.

The loss is always a *sum* over targets divided by a normalizer the loop passes in (the targets of the
whole accumulated batch), so 4 micro-batches of 2 give exactly the gradient of one batch of 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class Task:
    """Base task. `label_smoothing` is read by the loss (the LabelSmoothing regularizer sets it)."""

    name: str = ""
    label_smoothing: float = 0.0
    auto_class: Any = None
    generates: bool = False
    #: what a record's ``label`` is: "class" (one class), "classes" (multi-label), "value" (regression),
    #: "tags" (token classification: one tag per word, in ``tags``), or None (generation tasks read
    #: prompts and targets)
    label_kind: str | None = None
    #: the metric inputs this task gives a `MetricSuite` (`Metric.input`)
    metric_inputs: tuple[str, ...] = ("classes", "logits", "text")
    #: per-class loss weights (classification), set by `FineTuner` from `class_weights`; None: unweighted
    class_weights: torch.Tensor | None = None

    @property
    def has_labels(self) -> bool:
        """True for tasks over `{"text", "label"}` records with a sequence head (classification, multi-label,
        regression)."""
        return self.label_kind in ("class", "classes", "value")

    @property
    def has_classes(self) -> bool:
        """True when labels are class names that need a label mapping (classification, multi-label, and token
        classification's tags): the head is built for them and `id2label` is saved in its config."""
        return self.label_kind in ("class", "classes", "tags")

    def details(self, names: Sequence[Any]) -> dict[str, Any]:
        """What the model card and the report say about the head's training (e.g. the class weights)."""
        if self.class_weights is None:
            return {}
        return {"class weights (cross-entropy)": {str(n): float(f"{w:.6g}") for n, w in zip(names, self.class_weights.tolist())}}

    def metric_predictions(self, logits: torch.Tensor) -> torch.Tensor | None:
        """What "indicators"/"values" metrics read as predictions (None: the argmax of the logits)."""
        return None

    def predict_rows(self, logits: torch.Tensor, names: Sequence[Any]) -> list[Any]:
        """`FineTuner.predict` rows of a batch of head logits: the most probable label and its probability."""
        scores, ids = logits.float().softmax(-1).max(-1)
        return [{"label": names[int(i)] if names else int(i), "score": float(s)} for s, i in zip(scores, ids)]

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """Run the model without its own loss (we compute ours, normalized over the accumulated batch)."""
        return model(**{k: v for k, v in batch.items() if k != "labels"})

    def aligned(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels such that `logits[..., i, :]` predicts `labels[..., i]`."""
        return logits, labels

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Targets in a micro-batch: tokens that carry a loss, or examples."""
        raise NotImplementedError

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """Summed cross-entropy over the targets (float32 whatever the autocast dtype).

        `smoothing=False` gives the plain loss (evaluation) even when label smoothing is on.
        """
        return self.aligned_loss_sum(*self.aligned(logits, labels), smoothing=smoothing)

    def aligned_loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """`loss_sum` for logits and labels already aligned by `aligned`."""
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
            reduction="sum", label_smoothing=self.label_smoothing if smoothing else 0.0,
        )

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], normalizer: int) -> torch.Tensor:
        """Loss of a micro-batch, divided by the targets of the whole accumulated batch."""
        return self.loss_sum(outputs.logits, batch["labels"]) / max(1, normalizer)

    def eval_extra(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], records: list[dict[str, Any]],
                   preprocessor: Any) -> dict[str, Any]:
        """Task-specific metric inputs of one evaluation batch (`EvalBatch.extra`), from its aligned
        logits, the collated batch and its records; none by default. Token classification gives
        ``{"tags": (predicted, reference)}``, word-level tag sequences for "tags" metrics."""
        return {}


__all__ = ["IGNORE_INDEX", "Task"]
