"""Re-initialize the top blocks before fine-tuning (Zhang et al., 2021, "Revisiting Few-sample BERT
Fine-tuning": the top layers of a pretrained encoder are specialized to the pretraining task)."""

from __future__ import annotations

import torch
from torch import nn

from ..events import TrainState
from ..freezing.blocks import find_parts
from .base import Regularizer

__all__ = ["ReinitTopBlocks", "reinit_top_blocks"]

_FLAG = "_is_hf_initialized"


def _reinit(model: nn.Module, block: nn.Module) -> None:
    init = getattr(model, "_init_weights", None)
    if init is None:  # a plain torch model: each layer's own reset
        for module in block.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return
    # transformers' init functions skip tensors flagged as loaded from a checkpoint; lift the flags
    tensors = list(block.parameters()) + list(block.buffers())
    saved = [(t, t.__dict__.pop(_FLAG)) for t in tensors if _FLAG in t.__dict__]
    modules = [(m, m.__dict__.pop(_FLAG)) for m in block.modules() if _FLAG in m.__dict__]
    try:
        with torch.no_grad():
            block.apply(init)  # children first, then parents, as PreTrainedModel.initialize_weights does
    finally:
        for obj, value in saved + modules:
            setattr(obj, _FLAG, value)


def reinit_top_blocks(model: nn.Module, k: int, blocks: str | list[str] | None = None) -> list[str]:
    """Re-initialize the top `k` blocks of `model` with its own `_init_weights` (or each layer's
    `reset_parameters` for non-transformers models). Returns the block paths. Only the block modules are
    touched; a final norm attached to the top block (see `find_parts`) keeps its weights.

    For encoder-decoders the blocks are ordered encoder then decoder, so the top blocks are decoder blocks.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer (blocks to re-initialize), got {k!r}.")
    parts = find_parts(model, blocks)
    if k > len(parts.blocks):
        raise ValueError(f"Cannot re-initialize {k} blocks: the model has {len(parts.blocks)}.")
    chosen = parts.blocks[len(parts.blocks) - k:]
    for blk in chosen:
        _reinit(model, blk.module)
    return [blk.name for blk in chosen]


class ReinitTopBlocks(Regularizer):
    """Re-initialize the top `k` blocks in `on_setup`, before the optimizer is built.

    Example:
        >>> FineTuner(..., regularizers=[ReinitTopBlocks(2)])
    """

    def __init__(self, k: int = 1, blocks: str | list[str] | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer (blocks to re-initialize), got {k!r}.")
        self.k, self.blocks = k, blocks
        self.reinitialized: list[str] = []

    def describe(self) -> str:
        return f"re-initialized the top {self.k} block{'s' if self.k != 1 else ''} before training"

    def on_setup(self, state: TrainState) -> None:
        self.reinitialized = reinit_top_blocks(state.model, self.k, self.blocks)
