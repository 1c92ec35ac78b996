"""The `Regularizer` base class: a training callback that may add a penalty to the loss.

Contract:

* override any `on_<event>` hook of `Callback` (change settings in `on_setup`, before the optimizer is
  built; watch evaluations in `on_eval_end`; ...);
* the simple path for a loss term is `penalty(state) -> Tensor | None`: the base class's
  `on_loss_computed` adds it to `state.loss` (before backward) and stores its detached value in
  `state.penalties[self.name]`, which the FineTuner logs as `train/<name>`. A subclass that overrides
  `on_loss_computed` calls `super().on_loss_computed(state)` to keep this;
* `name` defaults to the class name in snake case (`L2SP` -> "l2sp", `MyPenalty` -> "my_penalty");
* state that must survive a resume goes through `state_dict()` / `load_state_dict()`.

`state.loss` is the micro-batch loss already divided by the targets of the whole accumulated batch
(`state.num_targets`); a penalty computed from the weights alone (not from the batch) should be
multiplied by `micro_batch_share(state)` so that it counts once per optimizer step under gradient
accumulation.

Example:
    >>> class L1(Regularizer):
    ...     def __init__(self, alpha):
    ...         self.alpha = alpha
    ...     def penalty(self, state):
    ...         w = [p for p in state.model.parameters() if p.requires_grad]
    ...         return self.alpha * sum(p.abs().sum() for p in w) * micro_batch_share(state)
"""

from __future__ import annotations

import re

import torch

from ..events import Callback, TrainState

__all__ = ["Regularizer", "micro_batch_share"]


def _snake(name: str) -> str:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name).lower()


class Regularizer(Callback):
    """Base class of regularizers: a `Callback` whose `penalty(state)` is added to the loss."""

    name: str = "regularizer"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake(cls.__name__)

    def penalty(self, state: TrainState) -> torch.Tensor | None:
        """The term to add to the loss of this micro-batch, or None. Default: None."""
        return None

    def on_loss_computed(self, state: TrainState) -> None:
        value = self.penalty(state)
        if value is None:
            return
        state.loss = value if state.loss is None else state.loss + value
        state.penalties[self.name] = value.detach()

    def describe(self) -> str:
        """A short readable description for the model card and the report, e.g. "weight decay 0.01".
        Default: the repr. Override it in your own regularizers."""
        return repr(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def micro_batch_share(state: TrainState) -> float:
    """This micro-batch's share of the targets of the accumulated batch (1.0 without accumulation info).

    Counts the targets in `state.batch["labels"]` as the loss does: one per example for classification
    (1-d or floating-point labels), the labels other than -100 for sequence-to-sequence models, and the
    labels other than -100 after the first position for causal language models (shifted targets).
    """
    total = state.num_targets
    batch = state.batch
    if not total or batch is None or "labels" not in batch:
        return 1.0
    labels = batch["labels"]
    if labels.dim() <= 1 or labels.is_floating_point():
        count = labels.shape[0]
    else:
        config = getattr(state.model, "config", None)
        shifted = labels if getattr(config, "is_encoder_decoder", False) else labels[..., 1:]
        count = int((shifted != -100).sum())
    return min(1.0, count / total)
