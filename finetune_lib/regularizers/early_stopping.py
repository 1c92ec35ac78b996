"""Stop training when a validation metric stops improving; restore the best weights at the end."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..events import TrainState
from .base import Regularizer

__all__ = ["EarlyStopping", "infer_mode"]

logger = logging.getLogger(__name__)

_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "wer", "cer")


def infer_mode(monitor: str) -> str:
    """"min" for losses, perplexity and error rates (by name), "max" for everything else."""
    key = monitor.rsplit("/", 1)[-1].lower()
    return "min" if any(word in key for word in _LOWER_IS_BETTER) else "max"


class EarlyStopping(Regularizer):
    """Stop when `monitor` has not improved for `patience` evaluations; restore the best weights.

    Args:
        monitor: key of the evaluation record, e.g. "validation/loss" or "validation/f1".
        mode: "min" or "max"; None infers it from the name (loss, perplexity, error -> "min").
        patience: evaluations without improvement before stopping.
        min_delta: the least change that counts as an improvement.
        restore_best: keep a CPU copy of the weights of the best evaluation (the whole `state_dict`,
            so it costs the model's size in host memory) and load it back in `on_fit_end`.

    Its `state_dict` holds the counters and, with `restore_best`, the best weights as tensors under
    "weights/<name>" keys, so a resumed run restores the same best model.

    Attributes (what happened, read by the model card and the report):
        best: the best value of `monitor` so far; `best_step` the step of that evaluation.
        stopped_step: the step at which early stopping ended training before its planned end; None
            when it did not (patience running out at the last planned step ends nothing).
        restored_step: the step whose weights `on_fit_end` loaded back into the model (the best
            evaluation's); None when nothing was restored, so the model keeps its last weights.

    Example:
        >>> FineTuner(..., regularizers=[EarlyStopping(monitor="validation/f1", patience=2)])
    """

    def __init__(self, monitor: str = "validation/loss", mode: str | None = None, patience: int = 3,
                 min_delta: float = 0.0, restore_best: bool = True):
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or None (inferred from the name), got {mode!r}.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer (evaluations), got {patience!r}.")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}.")
        self.monitor = monitor
        self.mode = mode or infer_mode(monitor)
        self.patience, self.min_delta, self.restore_best = patience, float(min_delta), restore_best
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_step: int | None = None
        self.restored_step: int | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None

    def describe(self) -> str:
        """E.g. "early stopping on validation/f1 (higher is better), patience 2, best weights restored"."""
        text = f"early stopping on {self.monitor} ({'lower' if self.mode == 'min' else 'higher'} is better), " \
               f"patience {self.patience}"
        if self.min_delta:
            text += f", min_delta {self.min_delta:g}"
        return text + (", best weights restored" if self.restore_best else ", last weights kept")

    def improved(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta`."""
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_eval_end(self, state: TrainState) -> None:
        record = state.record or {}
        if self.monitor not in record:
            split = self.monitor.split("/", 1)[0] + "/"
            if any(str(k).startswith(split) for k in record) and "/" in self.monitor:
                raise ValueError(f"EarlyStopping monitor {self.monitor!r} is not in the evaluation results; "
                                 f"available: {', '.join(sorted(record))}.")
            return  # another evaluation (e.g. a test split): not ours
        value = float(record[self.monitor])
        if value != value:  # NaN never improves
            value = float("inf") if self.mode == "min" else float("-inf")
        if self.improved(value):
            self.best, self.best_step, self.wait = value, state.step, 0
            if self.restore_best:
                self._snapshot(state.model)
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.should_stop = True
            planned = getattr(state, "max_steps", 0)
            if not planned or state.step < planned:  # at the last planned step, training ends anyway
                self.stopped_step = state.step
            logger.info("EarlyStopping: %s has not improved for %d evaluations (best %.6g at step %s); stopping.",
                        self.monitor, self.wait, self.best, self.best_step)

    def on_fit_start(self, state: TrainState) -> None:
        self.restored_step = None  # set again at the end of this fit, when weights are restored

    def on_fit_end(self, state: TrainState) -> None:
        if self.restore_best and self._best_weights is not None:
            self.restore(state.model)
            self.restored_step = self.best_step

    def restore(self, model: torch.nn.Module) -> None:
        """Copy the best weights back into `model` (in place, keeping devices and dtypes)."""
        if self._best_weights is None:
            raise RuntimeError("EarlyStopping has no best weights yet (no evaluation ran, or restore_best=False).")
        current = model.state_dict()
        missing = [k for k in current if k not in self._best_weights]
        if missing:
            raise RuntimeError(f"Best weights do not match the model (missing {missing[:3]}...).")
        with torch.no_grad():
            for key, tensor in current.items():
                tensor.copy_(self._best_weights[key])
        logger.info("EarlyStopping: restored the weights of step %s (%s = %.6g).", self.best_step, self.monitor,
                    self.best)

    def _snapshot(self, model: torch.nn.Module) -> None:
        copies: dict[tuple, torch.Tensor] = {}  # tied entries share one copy
        weights = {}
        for key, tensor in model.state_dict().items():
            ident = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.data_ptr() else (id(tensor),)
            if ident not in copies:
                copies[ident] = tensor.detach().to("cpu", copy=True)
            weights[key] = copies[ident]
        self._best_weights = weights

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"best": self.best, "best_step": self.best_step, "wait": self.wait,
                               "stopped_step": self.stopped_step, "mode": self.mode, "monitor": self.monitor}
        if self._best_weights is not None:
            seen: dict[int, str] = {}
            aliases: dict[str, str] = {}
            for key, tensor in self._best_weights.items():
                if id(tensor) in seen:  # tied weights are stored once (safetensors refuses shared tensors)
                    aliases[key] = seen[id(tensor)]
                else:
                    seen[id(tensor)] = key
                    out["weights/" + key] = tensor
            out["weight_aliases"] = aliases
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_step = state.get("best_step")
        self.wait = int(state.get("wait", 0))
        self.stopped_step = state.get("stopped_step")
        weights = {k[len("weights/"):]: v for k, v in state.items() if k.startswith("weights/")}
        for alias, key in (state.get("weight_aliases") or {}).items():
            weights[alias] = weights[key]
        self._best_weights = weights or None
