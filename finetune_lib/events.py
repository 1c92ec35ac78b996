"""The plugin contract: the loop's events, the `TrainState` plugins see, and the `Callback` base class.

This module imports nothing of the trainer: regularizers, the layer freezer, loggers and your own
code depend on it alone, and the trainer (`finetune_lib.training.finetuner`) depends on it too.

Contract for a `Callback`:

* every `on_<event>` method is optional; the base class does nothing;
* a callback reads the run through `TrainState`'s documented fields, and changes it only through the
  documented ways: `state.loss` in `on_loss_computed` (before backward), the gradients in
  `on_before_optimizer_step`, `state.should_stop = True` anywhere to end training after the current
  step, and the methods `set_weight_decay`, `set_label_smoothing` (in `on_setup`, before the
  optimizer exists) and `add_trainable_parameters` (to give newly unfrozen weights to the optimizer);
* a callback with state that must survive a resume returns it from `state_dict()` (plain Python
  values and tensors only: it is stored without pickle) and takes it back in `load_state_dict()`.
  On resume, callbacks are restored *before* the optimizer, so a callback that adds parameter groups
  (gradual unfreezing) can rebuild them first.

Example:
    >>> class PrintLoss(Callback):
    ...     def on_log(self, state):
    ...         if "train/loss" in state.record:
    ...             print(state.step, state.record["train/loss"])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

__all__ = ["EVENTS", "Callback", "CallbackList", "Event", "TrainState"]


class Event(str, Enum):
    """The events of the training loop, in the order `fit` emits them::

        setup                                   before the optimizer exists: set weight decay, label
                                                smoothing, change the model
        fit_start
          epoch_start
            batch_start -> (forward) -> loss_computed      penalties are added to the loss here
            -> (backward) -> before_optimizer_step         gradients unscaled; clipping follows
            -> (optimizer step) -> optimizer_step -> batch_end
            log                                 each logged record, training or evaluation
            eval_start -> eval_batch ... -> eval_end        early stopping decides at eval_end
            checkpoint                          after a checkpoint is complete on disk
          epoch_end
        fit_end

    A `Callback` has one method per event, named ``on_<value>`` (``Event.LOSS_COMPUTED`` ->
    ``on_loss_computed``). The values are plain strings, so ``Event.SETUP == "setup"``.
    """

    SETUP = "setup"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    LOSS_COMPUTED = "loss_computed"
    BEFORE_OPTIMIZER_STEP = "before_optimizer_step"
    OPTIMIZER_STEP = "optimizer_step"
    BATCH_END = "batch_end"
    LOG = "log"
    EVAL_START = "eval_start"
    EVAL_BATCH = "eval_batch"
    EVAL_END = "eval_end"
    CHECKPOINT = "checkpoint"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"

    @property
    def method(self) -> str:
        """The `Callback` method called for this event (``"on_" + value``)."""
        return "on_" + self.value


#: the event names, in loop order
EVENTS: tuple[str, ...] = tuple(e.value for e in Event)


@dataclass
class TrainState:
    """What the loop knows, handed to every callback.

    Plugins read these fields; they change the run only where the module's contract says (the loss,
    the gradients, `should_stop`) and through the methods below, never through the trainer object.

    Attributes:
        model: the model being trained (not a DDP wrapper).
        args: the run's settings (a `TrainingArgs`; read-only for plugins).
        task: the task object (`name`, `forward(model, batch)`, `loss(...)`), or None outside `fit`.
        tokenizer: the run's tokenizer, or None.
        output_dir: the run folder, or None when the run keeps everything in memory.
        is_main_process: False on the processes other than rank 0 under torchrun (they write nothing).
        history: every record logged so far (training and evaluation), oldest first.
        optimizer: the optimizer (None before `fit` builds it, i.e. during `setup`).
        scheduler: the learning-rate schedule (None before `fit` builds it).
        step: optimizer steps completed so far.
        epoch: the current epoch, counting from 0.
        batch_in_epoch: micro-batches of the current epoch already consumed.
        max_steps: optimizer steps the run will take.
        batch: the current micro-batch (tensors on the device), during batch and eval_batch events.
        example_ids: indices (into the training features) of the examples in `batch`.
        outputs: the model's outputs for `batch`, from `loss_computed` on.
        loss: the current micro-batch loss, already divided by the target tokens (or examples) of
            the whole accumulated batch; callbacks may add to it in `on_loss_computed`.
        num_targets: target tokens (LM tasks) or examples (classification) in the accumulated batch.
        penalties: name -> value of each penalty added to the loss this step (for logging).
        record: the record being logged, during `log`; the evaluation results, during `eval_end`.
        should_stop: set True to end training after the current optimizer step.
        weight_decay: the decoupled weight decay the optimizer gets (`set_weight_decay`; default 0).
        label_smoothing: the label smoothing of the training loss (`set_label_smoothing`; default 0).
        extra: free space for callbacks to share values.
    """

    model: torch.nn.Module
    args: Any = None
    task: Any = None
    tokenizer: Any = None
    output_dir: Path | None = None
    is_main_process: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
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
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: set by the trainer: puts named parameters into the live optimizer (see add_trainable_parameters)
    parameter_adder: Callable[[list[str]], None] | None = field(default=None, repr=False)

    def set_weight_decay(self, value: float) -> None:
        """Set the decoupled weight decay of the optimizer `fit` builds (call in `on_setup`).

        Biases and normalization weights never get it (see `training.optim.parameter_groups`).
        """
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight decay must be a finite number >= 0 (e.g. 0.01), got {value!r}.")
        if self.optimizer is not None:
            raise RuntimeError("set_weight_decay() is too late: the optimizer is built. Call it in on_setup.")
        self.weight_decay = value

    def set_label_smoothing(self, eps: float) -> None:
        """Set the label smoothing of the training loss (call in `on_setup`; evaluation loss is plain)."""
        eps = float(eps)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1) (e.g. 0.1), got {eps!r}.")
        if self.optimizer is not None:
            raise RuntimeError("set_label_smoothing() is too late: training has started. Call it in on_setup.")
        self.label_smoothing = eps

    def add_trainable_parameters(self, names: Iterable[str]) -> None:
        """Give parameters just made trainable (`requires_grad=True`) to the live optimizer, at the
        schedule's current factor (gradual unfreezing). Does nothing before the optimizer exists."""
        if self.parameter_adder is not None:
            self.parameter_adder(list(names))


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
    """Calls one event on every callback, in order.

    Example:
        >>> CallbackList([PrintLoss()]).emit(Event.LOG, state)
    """

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)

    def emit(self, event: Event | str, state: TrainState) -> None:
        method = Event(event).method
        for callback in self.callbacks:
            getattr(callback, method)(state)
