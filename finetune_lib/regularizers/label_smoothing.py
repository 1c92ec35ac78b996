"""Label smoothing, applied by the task's loss."""

from __future__ import annotations

from ..training.events import TrainState
from .base import Regularizer

__all__ = ["LabelSmoothing"]


class LabelSmoothing(Regularizer):
    """Cross-entropy against targets mixed with the uniform distribution: `(1 - eps) * one_hot + eps / K`.

    Sets `state.tuner.task.label_smoothing` in `on_setup`; the task's loss reads it.

    Example:
        >>> FineTuner(..., regularizers=[LabelSmoothing(0.1)])
    """

    def __init__(self, eps: float = 0.1):
        if not (0.0 <= float(eps) < 1.0):
            raise ValueError(f"LabelSmoothing eps must be in [0, 1) (e.g. 0.1), got {eps!r}.")
        self.eps = float(eps)

    def on_setup(self, state: TrainState) -> None:
        state.tuner.task.label_smoothing = self.eps
