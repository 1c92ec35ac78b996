"""Label smoothing, applied by the task's loss."""

from __future__ import annotations

from ..events import TrainState
from .base import Regularizer

__all__ = ["LabelSmoothing"]


class LabelSmoothing(Regularizer):
    """Cross-entropy against targets mixed with the uniform distribution: `(1 - eps) * one_hot + eps / K`.

    Calls `state.set_label_smoothing(eps)` in `on_setup`; the training loss uses it (evaluation's is plain).

    Example:
        >>> FineTuner(..., regularizers=[LabelSmoothing(0.1)])
    """

    def __init__(self, eps: float = 0.1):
        if not (0.0 <= float(eps) < 1.0):
            raise ValueError(f"LabelSmoothing eps must be in [0, 1) (e.g. 0.1), got {eps!r}.")
        self.eps = float(eps)

    def describe(self) -> str:
        return f"label smoothing {self.eps:g}"

    def on_setup(self, state: TrainState) -> None:
        kind = getattr(state.task, "label_kind", None)
        if kind in ("value", "classes"):
            raise ValueError(f"LabelSmoothing smooths a softmax target over classes; task {state.task.name!r} has "
                             "none (a value, or independent yes/no per label). Drop LabelSmoothing for this task.")
        state.set_label_smoothing(self.eps)
