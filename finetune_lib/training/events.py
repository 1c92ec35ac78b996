"""Events of the training loop and the `Callback` base class.

The loop in `finetuner.py` emits one event per step of its work; everything else (regularizers, the
layer freezer, loggers, progress bars, user code) attaches here, so the loop itself stays short.

Order of events::

    setup                                     (before the optimizer exists: change model or settings)
    fit_start
      epoch_start
        batch_start -> (forward) -> loss_computed -> (backward) -> before_optimizer_step
        -> (optimizer step) -> optimizer_step -> batch_end
        log                                   (each logged record, training or evaluation)
        eval_start -> eval_batch ... -> eval_end
        checkpoint
      epoch_end
    fit_end

Contract for a `Callback`:

* every method is optional; the base class does nothing;
* a callback may read anything in `TrainState`; it may change `state.loss` only in
  `on_loss_computed` (before backward), the gradients only in `on_before_optimizer_step`, and may set
  `state.should_stop = True` anywhere to end training after the current step;
* a callback with state that must survive a resume returns it from `state_dict()` (plain Python
  values and tensors only: it is stored without pickle) and takes it back in `load_state_dict()`.
  On resume, callbacks are restored *before* the optimizer, so a callback that adds parameter groups
  (gradual unfreezing) can rebuild them first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .finetuner import FineTuner

EVENTS = (
    "setup",
    "fit_start",
    "epoch_start",
    "batch_start",
    "loss_computed",
    "before_optimizer_step",
    "optimizer_step",
    "batch_end",
    "log",
    "eval_start",
    "eval_batch",
    "eval_end",
    "checkpoint",
    "epoch_end",
    "fit_end",
)


@dataclass
class TrainState:
    """What the loop knows, handed to every callback.

    Attributes:
        tuner: the `FineTuner` running the loop (its `model`, `task`, `tokenizer`, settings).
        model: the model being trained.
        optimizer: the optimizer (None before `fit` builds it).
        scheduler: the learning-rate schedule (None before `fit` builds it).
        step: optimizer steps completed so far.
        epoch: the current epoch, counting from 0.
        batch_in_epoch: micro-batches of the current epoch already consumed.
        max_steps: optimizer steps the run will take.
        batch: the current micro-batch (tensors on the device), during batch events.
        example_ids: indices (into the training features) of the examples in `batch`.
        outputs: the model's outputs for `batch`, from `loss_computed` on.
        loss: the current micro-batch loss, already divided by the target tokens (or examples) of
            the whole accumulated batch; callbacks may add to it in `on_loss_computed`.
        num_targets: target tokens (LM tasks) or examples (classification) in the accumulated batch.
        penalties: name -> value of each penalty added to the loss this step (for logging).
        record: the record being logged, during `log`; the evaluation results, during `eval_end`.
        should_stop: set True to end training after the current optimizer step.
        extra: free space for callbacks to share values.
    """

    tuner: FineTuner
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    max_steps: int = 0
    batch: dict[str, torch.Tensor] | None = None
    example_ids: list[int] = field(default_factory=list)
    outputs: Any = None
    loss: torch.Tensor | None = None
    num_targets: int = 0
    penalties: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    should_stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class for code that plugs into the training loop. Override the events you need.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_log(self, state):
        ...         if "train/loss" in state.record:
        ...             print(state.step, state.record["train/loss"])
    """

    def on_setup(self, state: TrainState) -> None: ...
    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_start(self, state: TrainState) -> None: ...
    def on_loss_computed(self, state: TrainState) -> None: ...
    def on_before_optimizer_step(self, state: TrainState) -> None: ...
    def on_optimizer_step(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState) -> None: ...
    def on_log(self, state: TrainState) -> None: ...
    def on_eval_start(self, state: TrainState) -> None: ...
    def on_eval_batch(self, state: TrainState) -> None: ...
    def on_eval_end(self, state: TrainState) -> None: ...
    def on_checkpoint(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (JSON-able values and tensors). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned. Default: nothing."""


class CallbackList:
    """Calls one event on every callback, in order."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def emit(self, event: str, state: TrainState) -> None:
        for callback in self.callbacks:
            getattr(callback, "on_" + event)(state)
