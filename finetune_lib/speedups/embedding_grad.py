"""Embedding gradients written into one reused buffer, instead of a fresh zeroed table every step.

**Gain.** torch's embedding backward makes a new zero-filled tensor the size of the whole table each
step (MiniLM: 30,522 x 384 floats, 47 MB) and adds the used rows into it. A tensor that large is
always its own `mmap` (above glibc's 32 MiB limit, so `malloc.reuse_freed_memory` cannot keep it),
so every step faults in 11,000 fresh pages before any real work: 12-13 ms per step on the benchmark
machine, of a ~150 ms MiniLM step (with `malloc`, 15-20% of a MiniLM epoch; BENCHMARKS.md). Here
the backward instead adds the used rows straight into the parameter's `.grad`, which it points at
a buffer allocated once and zeroed in place (1-2 ms). The values are the same: each used row gets
the sum of its positions' gradients, rows of `padding_idx` get none, micro-batches accumulate, a
tied output projection adds its own part (in either order).

**Caveats: autograd does not see this gradient.** The backward writes `.grad` itself and returns
no gradient for the weight, so for a patched table: tensor hooks (`weight.register_hook`) and
post-accumulate-grad hooks (`register_post_accumulate_grad_hook`) do not fire for the embedding's
part, `torch.autograd.grad(loss, weight)` does not get it, and a `.grad` that a callback keeps is
the reused buffer (zeroed in place at the next step). DDP and FSDP need autograd's accumulation
hooks, so `FineTuner` never applies it there. torch's own backward (the default) has none of this.

Applies to `nn.Embedding` tables of at least `MIN_ELEMENTS` entries with the plain
`nn.Embedding.forward` (no `max_norm`, `scale_grad_by_freq` or `sparse`, no forward set on the
instance). While a table is frozen (a `LayerFreezer`, gradual unfreezing) the plain forward runs.
The patch is an instance attribute removed when the block ends, so saved and pickled models are
untouched. Used by `FineTuner(cpu_speedups=True)` on a CPU, in a single process, during `fit`.

Example:
    >>> with reused_embedding_grads(model):
    ...     model(**batch).loss.backward()   # the table's rows land in model's embedding .grad
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .patching import own_forward, patched_forwards

#: tables smaller than this keep torch's own backward (their fresh allocation is cheap)
MIN_ELEMENTS = 1 << 20


class _EmbeddingIntoGrad(torch.autograd.Function):
    """Forward: `F.embedding`. Backward: the used rows added into `weight.grad` (from `buffer` when the
    weight has no gradient yet); returns no gradient for the weight itself."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None,
                buffer: list[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx, ctx.buffer = weight, padding_idx, buffer
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, None, None, None]:
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        rows, grads = ids.reshape(-1), grad_out.reshape(-1, weight.shape[1])
        if ctx.padding_idx is not None:
            keep = rows != ctx.padding_idx
            rows, grads = rows[keep], grads[keep]
        if weight.grad is None:
            if not ctx.buffer:
                ctx.buffer.append(torch.empty_like(weight))
            weight.grad = ctx.buffer[0].zero_()
        weight.grad.index_add_(0, rows, grads.to(weight.grad.dtype))
        return None, None, None, None


def _eligible(module: nn.Module) -> bool:
    return (type(module).forward is nn.Embedding.forward and not own_forward(module)
            and module.weight.numel() >= MIN_ELEMENTS and module.max_norm is None and not module.scale_grad_by_freq and not module.sparse)


def _patched_forward(module: nn.Embedding, buffer: list[torch.Tensor]) -> Any:
    def forward(ids: torch.Tensor) -> torch.Tensor:
        if not (module.weight.requires_grad and torch.is_grad_enabled()):
            return F.embedding(ids, module.weight, module.padding_idx)
        return _EmbeddingIntoGrad.apply(ids, module.weight, module.padding_idx, buffer)

    return forward


def reused_embedding_grads(model: nn.Module, enabled: bool = True) -> contextlib.AbstractContextManager[int]:
    """Within the block, large embedding tables of `model` write their gradient into a reused buffer
    (see the module docstring); yields how many tables were patched."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and _eligible(m)] if enabled else []
    return patched_forwards(tables, lambda m: _patched_forward(m, []))
