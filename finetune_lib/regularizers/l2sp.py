"""L2-SP: pull the weights toward their pretrained values (Li, Grandvalet & Davoine, 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..events import TrainState
from ..freezing.blocks import compile_patterns
from .base import Regularizer, micro_batch_share

__all__ = ["L2SP", "l2sp_penalty"]


def l2sp_penalty(params: dict[str, torch.Tensor], start: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """`alpha / 2 * sum ||w - w0||^2` over the names in `start` (computed in float32)."""
    total = None
    for name, w0 in start.items():
        diff = params[name].float() - w0.float()
        term = (diff * diff).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * alpha * total


class L2SP(Regularizer):
    """Penalty `alpha / 2 * sum ||w - w0||^2` over the trainable weights, `w0` being their values when
    training starts (the pretrained weights).

    The starting values are copied in `on_fit_start` (on the parameters' device, so this costs one more
    copy of the trainable weights); parameters that become trainable later (gradual unfreezing) are
    copied the first time they are seen trainable, which is before they are first updated. Under
    gradient accumulation the penalty is split over the micro-batches (`micro_batch_share`), so it counts
    once per optimizer step.

    Args:
        alpha: strength of the pull.
        exclude: name patterns (glob or regex) of parameters to leave out, e.g. a newly initialized
            classifier: `exclude=["classifier*", "score*"]`.

    Example:
        >>> FineTuner(..., regularizers=[L2SP(0.01)])
    """

    name = "l2sp"

    def __init__(self, alpha: float = 0.01, exclude: Sequence[str] | str | None = None):
        if not (float(alpha) >= 0.0):
            raise ValueError(f"L2SP alpha must be >= 0, got {alpha!r}.")
        self.alpha = float(alpha)
        self.exclude = exclude
        self._exclude = compile_patterns(exclude)
        self._start: dict[str, torch.Tensor] = {}

    def describe(self) -> str:
        excluded = [self.exclude] if isinstance(self.exclude, str) else list(self.exclude or [])
        return f"L2-SP {self.alpha:g} (pull toward the pretrained weights)" + (
            f", excluding {', '.join(excluded)}" if excluded else "")

    def _skip(self, name: str) -> bool:
        return any(match(name) for _, match in self._exclude)

    def snapshot(self, model: torch.nn.Module) -> None:
        """Copy the current values of the trainable parameters not yet copied."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and name not in self._start and not self._skip(name):
                    self._start[name] = param.detach().clone()

    def on_fit_start(self, state: TrainState) -> None:
        self.snapshot(state.model)

    def penalty(self, state: TrainState) -> torch.Tensor | None:
        if self.alpha == 0.0:
            return None
        self.snapshot(state.model)
        params = {n: p for n, p in state.model.named_parameters() if p.requires_grad and n in self._start}
        for name, param in params.items():
            if self._start[name].device != param.device:  # restored from a checkpoint on the CPU
                self._start[name] = self._start[name].to(param.device)
        start = {n: self._start[n] for n in params}
        if not start:
            return None
        return l2sp_penalty(params, start, self.alpha) * micro_batch_share(state)

    def state_dict(self) -> dict:
        return {"start/" + name: tensor for name, tensor in self._start.items()}

    def load_state_dict(self, state: dict) -> None:
        self._start = {k[len("start/"):]: v for k, v in state.items() if k.startswith("start/")}
