"""The CPU fast paths of a run, decided once from the device and the settings, applied by `fit`.

On a CPU, `FineTuner` (see `docs/topics/cpu-speed.md`):

* with `cpu_memory_reuse`: tunes glibc's malloc (`memory`, for `fit`, `evaluate` and `predict`), lets
  large embedding tables write their gradient into a reused buffer (`embedding_grad`, one process
  only) and frozen linears keep one low-precision copy of their weights (`frozen_casts`);
* with `cpu_fast_dropout`: draws dropout masks from a counter-based generator (`fast_dropout`),
  attention dropout included (`cpu_attention`);
* always: short training micro-batches use SDPA's math kernel (`cpu_attention`).

With `compile=True` the model patches and the kernel choice are off (the compiler fuses and chooses
itself; see `compiling`); the malloc setting stays.

Example:
    >>> paths = CpuPaths.for_run(torch.device("cpu"), args)
    >>> with paths.fit(model, torch.bfloat16, distributed=False):
    ...     with paths.micro_batch(batch):
    ...         model(**batch).loss.backward()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .cpu_attention import training_attention
from .embedding_grad import reused_embedding_grads
from .fast_dropout import fast_dropout
from .frozen_casts import cached_frozen_casts


@dataclass(frozen=True)
class CpuPaths:
    """Which CPU fast paths a run uses.

    Attributes:
        malloc_reuse: tune glibc's malloc so freed tensor memory is reused (`memory.reuse_cpu_memory`).
        patches: the model patches and the SDPA kernel choice apply (a CPU run, not compiled).
        memory_reuse: reused embedding gradients and cached frozen-weight casts.
        fast_dropout: counter-based dropout masks, attention dropout included.
    """

    malloc_reuse: bool = False
    patches: bool = False
    memory_reuse: bool = False
    fast_dropout: bool = False

    @classmethod
    def for_run(cls, device: torch.device, args: Any) -> CpuPaths:
        """The paths for a run on `device` with the `TrainingArgs` `args`."""
        cpu = device.type == "cpu"
        patches = cpu and not args.compile
        return cls(malloc_reuse=cpu and args.cpu_memory_reuse, patches=patches,
                   memory_reuse=patches and args.cpu_memory_reuse, fast_dropout=patches and args.cpu_fast_dropout)

    @contextlib.contextmanager
    def fit(self, model: nn.Module, autocast_dtype: torch.dtype | None, distributed: bool) -> Iterator[None]:
        """The model patches for the length of `fit` (DDP and FSDP keep torch's embedding backward)."""
        with (reused_embedding_grads(model, self.memory_reuse and not distributed),
              cached_frozen_casts(model, autocast_dtype, self.memory_reuse), fast_dropout(model, self.fast_dropout)):
            yield

    def micro_batch(self, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """The attention kernels (and attention dropout) of one training micro-batch."""
        if not self.patches:
            return contextlib.nullcontext()
        return training_attention(torch.device("cpu"), batch, self.fast_dropout)
