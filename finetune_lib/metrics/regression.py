"""Regression metrics: mean squared and absolute error, R², Pearson and Spearman correlation.

They consume numbers (``input = "values"``): ``update(preds, target)`` with two 1-d sequences of
the same length. For a regression `FineTuner`, ``preds`` are in the targets' units (target scaling
undone). Values agree with scikit-learn (`mean_squared_error`, `mean_absolute_error`, `r2_score`) and
SciPy (`scipy.stats.pearsonr`, `scipy.stats.spearmanr`). MSE, MAE and R² keep sums; the two
correlations keep every prediction and target (2 floats per example), as ranks need them.

Example:
    >>> m = MeanSquaredError()
    >>> m.update([2.5, 0.0, 2.0], [3.0, -0.5, 2.0])
    >>> round(m.compute(), 4)
    0.1667
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Metric, no_data


def value_pairs(metric: Metric, preds: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`preds` and `target` as flat float64 CPU tensors of the same length, finite."""
    where = f"{type(metric).__name__}.update(preds, target)"
    preds = torch.as_tensor(preds, dtype=torch.float64).reshape(-1).cpu()
    target = torch.as_tensor(target, dtype=torch.float64).reshape(-1).cpu()
    if preds.shape != target.shape:
        raise ValueError(f"{where} expects as many predictions as targets; got {preds.numel()} and {target.numel()}.")
    if not bool(torch.isfinite(preds).all() & torch.isfinite(target).all()):
        raise ValueError(f"{where}: predictions and targets must be finite numbers (NaN or inf found).")
    return preds, target


class _ValueMetric(Metric):
    """Shared per-example statistics of value metrics: each example's (pred, target)."""

    input = "values"

    def example_stats(self, *inputs: Any) -> torch.Tensor:
        return torch.stack(value_pairs(self, *inputs), 1)

    def compute_from_stats(self, stats: Any) -> float:
        scratch = self.clone()
        scratch.update(stats[:, 0], stats[:, 1])
        return scratch.compute()


class _SumMetric(_ValueMetric):
    """Sums of errors and targets: enough for MSE, MAE and R²."""

    higher_is_better = False
    count: torch.Tensor
    squared: torch.Tensor
    absolute: torch.Tensor
    target_sum: torch.Tensor
    target_squared: torch.Tensor

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        for state in ("squared", "absolute", "target_sum", "target_squared"):
            self.add_state(state, 0.0)
        self.add_state("count", 0)

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predictions and targets."""
        preds, target = value_pairs(self, preds, target)
        error = preds - target
        self.squared += (error * error).sum()
        self.absolute += error.abs().sum()
        self.target_sum += target.sum()
        self.target_squared += (target * target).sum()
        self.count += target.numel()

    def _n(self) -> int:
        if int(self.count) == 0:
            raise no_data(self)
        return int(self.count)


class MeanSquaredError(_SumMetric):
    """Mean squared error (`sklearn.metrics.mean_squared_error`); lower is better."""

    name = "mse"

    def compute(self) -> float:
        return float(self.squared) / self._n()


class MeanAbsoluteError(_SumMetric):
    """Mean absolute error (`sklearn.metrics.mean_absolute_error`); lower is better."""

    name = "mae"

    def compute(self) -> float:
        return float(self.absolute) / self._n()


class R2Score(_SumMetric):
    """Coefficient of determination, 1 - SSE / SST (`sklearn.metrics.r2_score`: with constant targets,
    1.0 for a perfect fit and 0.0 otherwise)."""

    name = "r2"
    higher_is_better = True

    def compute(self) -> float:
        n = self._n()
        total = float(self.target_squared) - float(self.target_sum) ** 2 / n
        if total <= 1e-12 * max(1.0, float(self.target_squared)):
            return 1.0 if float(self.squared) == 0 else 0.0
        return 1.0 - float(self.squared) / total


class _Correlation(_ValueMetric):
    """Keeps every (pred, target) pair: ranks need them all."""

    preds: torch.Tensor
    targets: torch.Tensor

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.add_state("preds", torch.zeros(0, dtype=torch.float64), reduce="cat")
        self.add_state("targets", torch.zeros(0, dtype=torch.float64), reduce="cat")

    def update(self, preds: Any, target: Any) -> None:
        """Adds a batch of predictions and targets."""
        preds, target = value_pairs(self, preds, target)
        self.preds = torch.cat([self.preds, preds])
        self.targets = torch.cat([self.targets, target])

    def _statistic(self, x: Any, y: Any) -> float:
        raise NotImplementedError

    def compute(self) -> float:
        """The correlation in [-1, 1]; NaN with fewer than 2 examples or a constant input (SciPy's value)."""
        if self.targets.numel() == 0:
            raise no_data(self)
        if self.targets.numel() < 2 or float(self.preds.std()) == 0 or float(self.targets.std()) == 0:
            return math.nan
        return float(self._statistic(self.preds.numpy(), self.targets.numpy()))


class PearsonCorrelation(_Correlation):
    """Pearson's r between predictions and targets (`scipy.stats.pearsonr`)."""

    name = "pearson"

    def _statistic(self, x: Any, y: Any) -> float:
        from scipy.stats import pearsonr

        return float(pearsonr(x, y)[0])


class SpearmanCorrelation(_Correlation):
    """Spearman's rank correlation between predictions and targets (`scipy.stats.spearmanr`)."""

    name = "spearman"

    def _statistic(self, x: Any, y: Any) -> float:
        from scipy.stats import spearmanr

        return float(spearmanr(x, y)[0])


__all__ = ["MeanAbsoluteError", "MeanSquaredError", "PearsonCorrelation", "R2Score", "SpearmanCorrelation",
           "value_pairs"]
