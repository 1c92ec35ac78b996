"""The CPU paths of a run, decided once from the device and the settings, applied by `fit`.

On a CPU, by default, `FineTuner` applies only what computes exactly what torch would and touches
only the run's own model (see `docs/topics/cpu-speed.md`):

* frozen linears keep one low-precision copy of their weights during `fit` (`frozen_casts`);
* short training micro-batches use SDPA's math kernel, chosen with torch's `sdpa_kernel`
  (`cpu_attention`).

With `cpu_speedups=True` it adds the opt-in techniques of `finetune_lib.speedups`: glibc keeps freed
memory during `fit`, `evaluate` and `predict` (`speedups.malloc`), large embedding tables write
their gradient into a reused buffer (one process only), dropout masks and attention dropout come from
a counter-based generator (`speedups.fast_dropout`, `speedups.attention`).

With `compile=True` the model patches and the kernel choice are off (the compiler fuses and chooses
itself; see `compiling`); the malloc setting of `cpu_speedups` stays.

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

from ..speedups import cpu_speedups_for, reuse_freed_memory
from .cpu_attention import training_attention
from .frozen_casts import cached_frozen_casts


@dataclass(frozen=True)
class CpuPaths:
    """Which CPU paths a run uses.

    Attributes:
        patches: the frozen-weight casts and the SDPA kernel choice apply (a CPU run, not compiled).
        malloc_reuse: glibc keeps freed memory during `fit`, `evaluate` and `predict` (`cpu_speedups`).
        speedups: the model-scoped techniques of `finetune_lib.speedups` apply during `fit` (`cpu_speedups`).
    """

    patches: bool = False
    malloc_reuse: bool = False
    speedups: bool = False

    @classmethod
    def for_run(cls, device: torch.device, args: Any) -> CpuPaths:
        """The paths for a run on `device` with the `TrainingArgs` `args`."""
        cpu = device.type == "cpu"
        patches = cpu and not args.compile
        return cls(patches=patches, malloc_reuse=cpu and args.cpu_speedups, speedups=patches and args.cpu_speedups)

    @contextlib.contextmanager
    def fit(self, model: nn.Module, autocast_dtype: torch.dtype | None, distributed: bool) -> Iterator[None]:
        """The CPU paths for the length of `fit`, all taken off when it ends."""
        with (self.memory(), cached_frozen_casts(model, autocast_dtype, self.patches),
              cpu_speedups_for(model, distributed) if self.speedups else contextlib.nullcontext()):
            yield

    def memory(self) -> contextlib.AbstractContextManager[bool]:
        """glibc's malloc keeps freed memory for the block (with `cpu_speedups` on a CPU; else nothing)."""
        return reuse_freed_memory(self.malloc_reuse)

    def micro_batch(self, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """The attention kernels of one training micro-batch."""
        if not self.patches:
            return contextlib.nullcontext()
        return training_attention(torch.device("cpu"), batch)
