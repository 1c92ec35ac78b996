"""Decoupled weight decay (AdamW style), set on the optimizer the FineTuner builds."""

from __future__ import annotations

from ..training.events import TrainState
from .base import Regularizer

__all__ = ["WeightDecay"]


class WeightDecay(Regularizer):
    """Decoupled weight decay of `value` on every trainable weight except biases and normalization
    weights (the split by module type lives in `training.optim.parameter_groups`).

    Sets `state.tuner.weight_decay` in `on_setup`; the optimizer, built after `setup`, reads it.

    Example:
        >>> FineTuner(..., regularizers=[WeightDecay(0.01)])
    """

    def __init__(self, value: float = 0.01):
        if not (float(value) >= 0.0):
            raise ValueError(f"WeightDecay value must be >= 0 (e.g. 0.01), got {value!r}.")
        self.value = float(value)

    def on_setup(self, state: TrainState) -> None:
        state.tuner.weight_decay = self.value
