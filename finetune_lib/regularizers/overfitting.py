"""Warn when validation loss rises while training loss falls."""

from __future__ import annotations

import logging
from typing import Any

from ..events import TrainState
from .base import Regularizer

__all__ = ["OverfittingMonitor"]

logger = logging.getLogger(__name__)


class OverfittingMonitor(Regularizer):
    """Warn (logger "finetune_lib.regularizers.overfitting") and set `state.extra["overfitting_warning"]`
    when, for `patience` consecutive evaluations, the validation loss rose while the training loss fell.

    The training loss of an evaluation is the mean of the `train/loss` records logged (`on_log`) since the
    previous evaluation; an evaluation with no training records in between does not count either way.

    Args:
        patience: consecutive evaluations of diverging losses before warning.
        monitor: key of the validation loss in the evaluation results.
        train_key: key of the training loss in the logged records.

    Example:
        >>> FineTuner(..., regularizers=[OverfittingMonitor(patience=2)])
    """

    def __init__(self, patience: int = 2, monitor: str = "validation/loss", train_key: str = "train/loss"):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer (evaluations), got {patience!r}.")
        self.patience, self.monitor, self.train_key = patience, monitor, train_key
        self.count = 0
        self.warning: str | None = None
        self._train: list[float] = []
        self._previous: tuple[float, float] | None = None  # (validation loss, training loss)

    def describe(self) -> str:
        return (f"overfitting monitor on {self.monitor} against {self.train_key}, patience {self.patience} "
                "(warns only)")

    def on_log(self, state: TrainState) -> None:
        if self.train_key in (state.record or {}):
            self._train.append(float(state.record[self.train_key]))

    def on_eval_end(self, state: TrainState) -> None:
        record = state.record or {}
        if self.monitor not in record:
            return
        if not self._train:
            return
        val = float(record[self.monitor])
        train = sum(self._train) / len(self._train)
        self._train = []
        if self._previous is not None:
            prev_val, prev_train = self._previous
            self.count = self.count + 1 if (val > prev_val and train < prev_train) else 0
        self._previous = (val, train)
        if self.count >= self.patience:
            self.warning = (f"Possible overfitting at step {state.step}: {self.monitor} rose for {self.count} "
                            f"evaluations in a row ({val:.4g} now) while {self.train_key} fell ({train:.4g} now). "
                            "Consider early stopping, more regularization or fewer trainable layers.")
            state.extra["overfitting_warning"] = self.warning
            if self.count == self.patience:
                logger.warning(self.warning)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "train": list(self._train),
                "previous": list(self._previous) if self._previous else None, "warning": self.warning}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state.get("count", 0))
        self._train = [float(x) for x in state.get("train", [])]
        prev = state.get("previous")
        self._previous = (float(prev[0]), float(prev[1])) if prev else None
        self.warning = state.get("warning")
