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
        extra: free space.
    """

    task: str
    logits: torch.Tensor
    labels: torch.Tensor
    records: list[dict[str, Any]]
    prompts: list[str] | None = None
    references: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preds(self) -> torch.Tensor:
        """Predicted class ids (classification) or token ids (LM), argmax over the last axis."""
        return self.logits.argmax(dim=-1)
