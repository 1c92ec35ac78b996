"""R-Drop: consistency between two dropout masks (Liang et al., 2021)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..events import TrainState
from .base import Regularizer

__all__ = ["RDrop", "symmetric_kl"]


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-position `(KL(p_a || p_b) + KL(p_b || p_a)) / 2` over the last dimension, in float32."""
    log_a = F.log_softmax(logits_a.float(), dim=-1)
    log_b = F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = (log_a.exp() * (log_a - log_b)).sum(-1)
    kl_ba = (log_b.exp() * (log_b - log_a)).sum(-1)
    return 0.5 * (kl_ab + kl_ba)


def _aligned(logits: torch.Tensor, labels: torch.Tensor | None, encoder_decoder: bool,
             ignore_index: int, task: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the positions that have a target, and the mask of those positions (None: all). A
    task's own `aligned` (`finetune_lib.tasks.Task`) says which logits predict which labels."""
    if labels is not None and logits.dim() > 2 and hasattr(task, "aligned"):
        logits, labels = task.aligned(logits, labels)
        return logits, labels != ignore_index
    if logits.dim() <= 2:  # classification: one distribution per example
        if labels is not None and labels.dim() == 1 and not labels.is_floating_point():
            return logits, labels != ignore_index
        return logits, None
    if labels is None:
        return logits, None
    if encoder_decoder:  # seq2seq: logits and labels are aligned
        return logits, labels != ignore_index
    return logits[..., :-1, :], labels[..., 1:] != ignore_index  # causal LM: position t predicts t + 1


def _default_forward(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
    return model(**batch)


class RDrop(Regularizer):
    """Run the batch through the model a second time (another dropout mask) and add
    `alpha * symmetric KL` between the two predicted distributions, over the positions that have a
    target (labels other than -100; for causal LMs the shifted positions).

    Only in training mode (in eval mode both passes agree and it adds nothing). The task loss still comes
    from the first pass. The KL is summed over positions and divided by `state.num_targets` (the targets
    of the accumulated batch, as the loss is), or averaged over the positions when that is 0.

    Args:
        alpha: weight of the consistency term (the paper uses 0.1 to 5 depending on the task).
        forward: `(model, batch) -> outputs with .logits` for the second pass; default `model(**batch)`.
            Pass the same call the training loop makes if it filters or renames batch keys.
        ignore_index: label value of positions without a target.

    Example:
        >>> FineTuner(..., regularizers=[RDrop(alpha=1.0)])
    """

    name = "rdrop"

    def __init__(self, alpha: float = 1.0, forward: Callable[[torch.nn.Module, dict], Any] | None = None,
                 ignore_index: int = -100):
        if not (float(alpha) >= 0.0):
            raise ValueError(f"RDrop alpha must be >= 0, got {alpha!r}.")
        self.alpha = float(alpha)
        self.forward = forward
        self.ignore_index = ignore_index

    def describe(self) -> str:
        return f"R-Drop {self.alpha:g} (consistency between two dropout masks)"

    def on_setup(self, state: TrainState) -> None:
        kind = getattr(state.task, "label_kind", None)
        if kind in ("value", "classes"):
            raise ValueError(f"RDrop compares the softmax distributions of two passes, which task "
                             f"{state.task.name!r} does not predict (a value, or independent yes/no per label). "
                             "Drop RDrop, or regularize with Dropout(p) or WeightDecay(v) instead.")

    def penalty(self, state: TrainState) -> torch.Tensor | None:
        model = state.model
        if self.alpha == 0.0 or not model.training or state.batch is None or state.outputs is None:
            return None
        first = state.outputs.logits
        forward = self.forward or getattr(state.task, "forward", None) or _default_forward
        second = forward(model, state.batch).logits
        labels = state.batch.get("labels")
        encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        a, mask = _aligned(first, labels, encoder_decoder, self.ignore_index, state.task)
        b, _ = _aligned(second, labels, encoder_decoder, self.ignore_index, state.task)
        kl = symmetric_kl(a, b)
        if mask is not None:
            kl = kl[mask]
        if kl.numel() == 0:
            return first.sum() * 0.0
        total = kl.sum() / state.num_targets if state.num_targets else kl.mean()
        return self.alpha * total
