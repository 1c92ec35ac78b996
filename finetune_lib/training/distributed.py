"""Multi-process data-parallel training on torch.distributed (DDP), launched with `torchrun`.

`FineTuner` detects `torchrun`'s environment (WORLD_SIZE > 1) and then:
- sets up the process group (NCCL on GPUs, gloo on CPUs) and one device per process;
- wraps the model in `DistributedDataParallel` after freezing, so frozen parameters are simply not
  part of it (no "unused parameters" failures);
- splits every micro-batch of the global order across processes: each process sees a disjoint
  share, the target count is that of the whole step (every process knows it without talking), and
  the loss is scaled by the world size to undo DDP's gradient averaging, so the gradient equals
  one process with the same effective batch;
- evaluates a disjoint shard per process; metrics and the loss are combined across processes;
- logs, shows progress and writes checkpoints from rank 0 only.

Example (2 processes on one machine)::

    torchrun --nproc_per_node=2 train.py
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistributedContext:
    """Where this process stands: rank, world size, its device; a single process when not launched."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        if requested:
            return torch.device(requested)
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return torch.device("cpu")

    def init(self, device: torch.device) -> None:
        """Join the process group (once per process)."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model to run forward/backward through: DDP over the trainable parameters."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's disjoint share: every world_size-th item, starting at its rank."""
        return list(items[self.rank:: self.world_size]) if self.enabled else list(items)

    def no_sync(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if self.enabled and not last and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


@contextlib.contextmanager
def main_first(ctx: DistributedContext) -> Iterator[None]:
    """Let rank 0 do something first (e.g. write a folder), the others after."""
    if not ctx.is_main:
        ctx.barrier()
    yield
    if ctx.is_main:
        ctx.barrier()
