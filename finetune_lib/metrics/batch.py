"""`EvalBatch`: what the evaluation loop hands to `MetricSuite` for each batch.

The loop never keeps more than one batch of logits; the suite takes what each metric needs and
lets the rest go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EvalBatch:
    """One evaluated batch.

    Attributes:
        task: "classification", "causal_lm" or "seq2seq".
        logits: classification `[B, C]`; LM tasks `[B, T, V]`, already aligned with `labels`
            (for causal LMs the loop shifts them, so `logits[:, t]` predicts `labels[:, t]`).
        labels: classification `[B]` class ids; LM tasks `[B, T]` token ids with `-100` where no
            loss is taken (prompt, padding).
        records: the B raw records (dicts with "text"/"label" or "prompt"/"target", and any other
            columns), for slices and for text references.
        prompts: for LM tasks, the B prompts to generate from (None for classification).
        references: for LM tasks, the B reference targets as text (None for classification).
        extra: free space; token classification puts its word-level tags here, ``extra["tags"] =
            (predicted, reference)``, one list of tags per record (`Task.eval_extra`).
        predictions: what "indicators" and "values" metrics read as predictions: multi-label 0/1
            matrix `[B, L]` (thresholds applied), regression values `[B]` (in the targets' units).
    """

    task: str
    logits: torch.Tensor
    labels: torch.Tensor
    records: list[dict[str, Any]]
    prompts: list[str] | None = None
    references: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    predictions: torch.Tensor | None = None

    @property
    def preds(self) -> torch.Tensor:
        """Predicted class ids (classification) or token ids (LM), argmax over the last axis; or the
        task's own `predictions` when given (multi-label: 0/1 matrix `[B, L]`; regression: values `[B]`)."""
        if self.predictions is not None:
            return self.predictions
        return self.logits.argmax(dim=-1)
