"""Frozen linear layers keep one low-precision copy of their weights for the length of `fit`.

Under autocast, `nn.Linear` casts its float32 weight to bf16 (or fp16) at every call. torch caches
that cast within one autocast region only for leaves that require grad, and a frozen weight does
not: so every forward of a frozen layer reads its float32 weight and writes a fresh low-precision
copy. With the first 4 of MiniLM's 6 blocks frozen that is 7M weights cast per step, about 6% of the
step on the benchmark machine. Here each frozen `nn.Linear` casts once and reuses the copy while the
weight is unchanged: the copy is keyed by the weight's (and bias') version counter, storage and
shape, so an in-place change (`load_state_dict`, an optimizer step after unfreezing, `.data = ...`)
makes a new copy at the next call. The result is the very same: autocast would cast the same values
to the same dtype, and a tensor already in that dtype passes through autocast untouched.

It applies only while autocast is on for the module's device with the cached dtype, to layers whose
weight and bias both do not require grad (trainable layers need the cast inside autograd), with the
plain `nn.Linear.forward`. Memory: 2 bytes per cached weight; layers are taken bottom-up until
`max_bytes` (default 1 GiB) is reached, and the copies are freed when `fit` ends.

Applied by default by `FineTuner` on a CPU with bf16 autocast (not with `compile=True`): exact, and
scoped to the run's own model. The patch is an instance attribute removed when `fit` ends; layers
with a forward set on the instance (a hook's wrapper) are left alone.

Example:
    >>> with cached_frozen_casts(model, torch.bfloat16) as n:   # n: frozen layers with a cached copy
    ...     with torch.autocast("cpu", dtype=torch.bfloat16):
    ...         model(**batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..speedups.patching import patched_forwards

#: the most memory the low-precision copies may take
MAX_BYTES = 1 << 30


def _key(t: torch.Tensor | None) -> tuple[Any, ...] | None:
    return None if t is None else (t._version, t.data_ptr(), t.shape, t.dtype)


class _CachedCast:
    """The forward of one frozen `nn.Linear`: the cached cast when it applies, else the plain linear."""

    def __init__(self, module: nn.Linear, dtype: torch.dtype) -> None:
        self.module, self.dtype = module, dtype
        self.key: tuple[Any, ...] | None = None
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.module.weight, self.module.bias
        device = w.device.type
        if (w.requires_grad or (b is not None and b.requires_grad) or not w.is_floating_point()
                or not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != self.dtype):
            return F.linear(x, w, b)
        key = (_key(w), _key(b))
        if key != self.key:
            self.weight = w.detach().to(self.dtype)
            self.bias = None if b is None else b.detach().to(self.dtype)
            self.key = key
        return F.linear(x, self.weight, self.bias)


def frozen_linears(model: nn.Module, max_bytes: int | None = None, bytes_per_value: int = 2) -> list[nn.Linear]:
    """The `nn.Linear` layers (plain forward) whose parameters are all frozen now, in module order,
    as many as fit in `max_bytes` (default `MAX_BYTES`) at `bytes_per_value` per weight."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    chosen, total = [], 0
    for m in model.modules():
        if not isinstance(m, nn.Linear) or type(m).forward is not nn.Linear.forward or "forward" in vars(m):
            continue
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            continue
        size = sum(p.numel() for p in m.parameters(recurse=False)) * bytes_per_value
        if total + size > max_bytes:
            break
        chosen.append(m)
        total += size
    return chosen


@contextlib.contextmanager
def cached_frozen_casts(model: nn.Module, dtype: torch.dtype | None, enabled: bool = True,
                        max_bytes: int | None = None) -> Iterator[int]:
    """Within the block, frozen `nn.Linear` layers of `model` reuse one `dtype` copy of their weights
    under autocast; yields how many layers are covered. Layers frozen later (gradual unfreezing runs
    the other way) are not added; a layer unfrozen later takes the plain path again."""
    if not enabled or dtype not in (torch.bfloat16, torch.float16):
        yield 0
        return
    size = torch.finfo(dtype).bits // 8
    with patched_forwards(frozen_linears(model, max_bytes, size), lambda m: _CachedCast(m, dtype)) as n:
        yield n
