"""Decoupled weight decay (AdamW style), set on the optimizer the FineTuner builds."""

from __future__ import annotations

from collections.abc import Iterable

from ..events import TrainState
from .base import Regularizer

__all__ = ["WeightDecay", "configured_weight_decay"]


class WeightDecay(Regularizer):
    """Decoupled weight decay of `value` on every trainable weight except biases and normalization
    weights (the split by module type lives in `training.optim.parameter_groups`).

    The one way to set weight decay: calls `state.set_weight_decay(value)` in `on_setup`; the optimizer,
    built after `setup`, takes it. At most one `WeightDecay` per run.

    Example:
        >>> FineTuner(..., regularizers=[WeightDecay(0.01)])
    """

    def __init__(self, value: float = 0.01):
        if not (0.0 <= float(value) < float("inf")):
            raise ValueError(f"WeightDecay value must be >= 0 (e.g. 0.01), got {value!r}.")
        self.value = float(value)

    def describe(self) -> str:
        return f"weight decay {self.value:g} (not on biases and normalization weights)"

    def on_setup(self, state: TrainState) -> None:
        state.set_weight_decay(self.value)


def configured_weight_decay(callbacks: Iterable[object]) -> float:
    """The weight decay `callbacks` set: the value of their `WeightDecay`, or 0.0 without one.

    Raises:
        ValueError: more than one `WeightDecay` (the run would use only the last one's value).
    """
    found = [c for c in callbacks if isinstance(c, WeightDecay)]
    if len(found) > 1:
        raise ValueError(f"{len(found)} WeightDecay regularizers were given ({', '.join(str(c.value) for c in found)}); "
                         "pass one, e.g. regularizers=[WeightDecay(0.01)].")
    return found[0].value if found else 0.0
