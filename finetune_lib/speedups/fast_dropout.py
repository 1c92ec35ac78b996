"""Dropout masks from a counter-based generator on a CPU, instead of torch's serial Bernoulli draws.

**Gain.** On a CPU, `nn.Dropout` draws its mask with `bernoulli_`, one Mersenne Twister number at a
time on one core (torch uses MKL's parallel generator only on Intel CPUs): about 0.85 ms for a 16 x
15 x 384 activation on the benchmark machine (an AMD EPYC), 20 calls per MiniLM step. Here the mask
comes from SplitMix64 (Steele, Lea, Flood 2014: the output function over the counter sequence key +
i * golden gamma), 4 mask entries per 64-bit value, computed with numpy's vectorized integer ops (on
these sizes twice as fast as the same ops in torch): about 0.17 ms per dropout of that size, mask
included. Measured per MiniLM step: 1.07x with blocks 0-3 frozen, 1.02x for full fine-tuning
(docs/topics/cpu-speed.md); attention-probability dropout with the same masks (`attention`) adds
1.05x frozen, 1.04x full.

**What stays and what changes.** The math is dropout's: each entry is kept with probability 1 - p
and scaled by 1 / (keep probability), so its expected value is unchanged; the backward multiplies by
the same mask and scale. The keep probability is resolved to 1/65,536 (p = 0.1 keeps 58,982 of
65,536 values: 0.899994), and the scale is the exact inverse of that probability. The 64-bit key of
each call is drawn from torch's default generator, so a seeded run is reproducible and a resumed run
(which restores that generator) draws the same masks. Caveat: the masks are not the ones torch's
dropout would draw, so a run does not repeat a plain PyTorch loop's losses bit for bit.

Applies to modules whose forward is `nn.Dropout.forward` (none set on the instance); the patch is an
instance attribute removed when the block ends. Used by `FineTuner(cpu_speedups=True)` on a CPU,
during `fit`.

Example:
    >>> with fast_dropout(model):
    ...     loss = model(**batch).loss   # nn.Dropout modules draw masks here
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .patching import own_forward, patched_forwards

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's constants
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))
_LEVELS = 1 << 16  # each mask entry compares 16 random bits


def _splitmix64(count: int, key: int) -> np.ndarray:
    """`count` SplitMix64 outputs for the counters key + i * gamma (i = 0, 1, ...), as uint64."""
    z = np.arange(count, dtype=np.uint64)
    z *= _GAMMA  # numpy's uint64 arithmetic wraps around, as SplitMix64's does
    z += np.uint64(key % (1 << 64))
    shifted = np.empty_like(z)
    for shift, mix in zip(_SHIFTS, (_MIX1, _MIX2, None)):
        np.right_shift(z, shift, out=shifted)
        z ^= shifted
        if mix is not None:
            z *= mix
    return z


def _bits16(count: int, key: int) -> np.ndarray:
    return _splitmix64((count + 3) // 4, key).view(np.int16)[:count]


def random_bits16(count: int, key: int) -> torch.Tensor:
    """`count` uniformly random int16 values: SplitMix64 outputs for counters `key + i * gamma`,
    viewed as 4 int16 each. The same (count, key) gives the same values, on any number of threads."""
    return torch.from_numpy(_bits16(count, key))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape` whose entries are True with probability ~(1 - p), and the scale
    1 / P(True) that keeps the expected value; the key is drawn from `generator` (default: torch's).

    Example:
        >>> mask, scale = keep_mask((16, 15, 384), 0.1)   # mask.float().mean() ~ 0.9, scale ~ 1.111
    """
    kept = round((1.0 - p) * _LEVELS)
    if not 0 < kept <= _LEVELS:
        raise ValueError(f"dropout probability must be in [0, 1) with a keep probability of at least 1/65536, got {p!r}.")
    key = int(torch.randint(-(1 << 62), 1 << 62, (1,), generator=generator))
    # the int16 values are uniform over [-32768, 32768): the lowest `kept` of them are kept
    keep = np.less(_bits16(math.prod(shape), key), kept - _LEVELS // 2)
    return torch.from_numpy(keep).view(shape), _LEVELS / kept


class _MaskedScale(torch.autograd.Function):
    """out = x * mask * scale; the gradient is grad * mask * scale (as torch's native dropout)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        mask, scale = keep_mask(x.shape, p)
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.where(mask, x * scale, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad * ctx.scale, 0), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the mask from `keep_mask` (CPU tensors; others go to torch)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return nn.functional.dropout(x, p, training)
    return _MaskedScale.apply(x, p)


def _patched_forward(module: nn.Dropout) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if module.inplace:
            return nn.functional.dropout(x, module.p, module.training, inplace=True)
        return dropout(x, module.p, module.training)

    return forward


def fast_dropout(model: nn.Module, enabled: bool = True) -> contextlib.AbstractContextManager[int]:
    """Within the block, the `nn.Dropout` modules of `model` draw their masks with `keep_mask` (see
    the module docstring); yields how many modules were patched."""
    modules = ([m for m in model.modules() if type(m).forward is nn.Dropout.forward and not own_forward(m)]
               if enabled else [])
    return patched_forwards(modules, _patched_forward)
