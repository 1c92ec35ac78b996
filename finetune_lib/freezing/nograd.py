"""Run the frozen prefix of a model (its first frozen blocks) without autograd.

Frozen blocks at the bottom of the stack need no backward pass: nothing below them trains. Autograd
usually records nothing there anyway, because no input requires grad; but it does record the whole
prefix when the embedding output requires grad (`model.enable_input_require_grads()`, PEFT-style
setups, reentrant activation checkpointing), and then it keeps every activation of the frozen blocks
alive until backward.

`NoGradPrefix` puts a forward pre-hook on each block of the prefix that switches autograd off and a
post-hook (`always_call=True`, so an exception cannot leave autograd off) that restores the previous
mode. If the block's input required grad, the post-hook returns its output detached, as a leaf that
requires grad, so that the next (trainable) block sees the same `requires_grad` as without the hooks
and reentrant activation checkpointing still produces gradients for it. Gradients of the trainable
parameters are unchanged.

It is only correct for a prefix: frozen blocks *above* a trainable part must backpropagate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["NoGradPrefix"]


def _any_requires_grad(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad
    if isinstance(obj, (tuple, list)):
        return any(_any_requires_grad(x) for x in obj)
    if isinstance(obj, dict):
        return any(_any_requires_grad(x) for x in obj.values())
    return False


def _as_leaves(obj: Any) -> Any:
    """Floating-point tensors in `obj` as detached leaves that require grad."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return obj.detach().requires_grad_(True)
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_as_leaves(x) for x in obj)
    if isinstance(obj, list):
        return [_as_leaves(x) for x in obj]
    if isinstance(obj, dict):  # includes transformers' ModelOutput, updated in place
        for key in list(obj.keys()):
            obj[key] = _as_leaves(obj[key])
        return obj
    return obj


class _BlockHooks:
    """Pre- and post-hook of block `index`; a stack of saved modes handles re-entrant calls."""

    def __init__(self, owner: NoGradPrefix, index: int) -> None:
        self.owner, self.index = owner, index
        self.saved: list[tuple[bool, bool] | None] = []

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.index == 0:
            self.owner.refresh()
        if self.index >= self.owner.active:  # something below (or in) this block trains now
            self.saved.append(None)
            return
        enabled = torch.is_grad_enabled()
        needs = enabled and (_any_requires_grad(args) or _any_requires_grad(kwargs))
        self.saved.append((enabled, needs))
        torch.set_grad_enabled(False)

    def post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self.saved:
            return None
        saved = self.saved.pop()
        if saved is None:
            return None
        enabled, needs = saved
        torch.set_grad_enabled(enabled)
        if output is None or not needs:
            return None
        return _as_leaves(output)


class NoGradPrefix:
    """Installs and removes the no-autograd hooks on the frozen prefix of a stack of blocks.

    The hooks re-check at every forward (when the first block runs) that the embeddings and the hooked
    blocks are still frozen, so a parameter made trainable later by hand only shortens the prefix.

    Example:
        >>> prefix = NoGradPrefix()
        >>> prefix.install(blocks, block_params, embedding_params)
        >>> prefix.remove()
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self.blocks: list[nn.Module] = []
        self._block_params: list[list[torch.Tensor]] = []
        self._below: list[torch.Tensor] = []
        self.active = 0

    def install(self, blocks: list[nn.Module], block_params: list[list[torch.Tensor]],
                below: list[torch.Tensor] = ()) -> None:
        """Hook `blocks` (the bottom blocks, in order), given each block's parameters and the parameters
        that run before them (embeddings); replaces any earlier installation."""
        self.remove()
        self.blocks, self._block_params, self._below = list(blocks), list(block_params), list(below)
        for index, block in enumerate(self.blocks):
            hooks = _BlockHooks(self, index)
            self._handles.append(block.register_forward_pre_hook(hooks.pre, with_kwargs=True))
            self._handles.append(block.register_forward_hook(hooks.post, always_call=True))
        self.refresh()

    def refresh(self) -> int:
        """Recount the blocks that may run without autograd (all frozen, nothing below them trains)."""
        active = 0
        if not any(p.requires_grad for p in self._below):
            for params in self._block_params:
                if any(p.requires_grad for p in params):
                    break
                active += 1
        self.active = active
        return active

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.blocks, self._block_params, self._below = [], [], []
        self.active = 0

    def __len__(self) -> int:
        return self.active
