"""Multi-process training on torch.distributed, launched with `torchrun`: DDP, or FSDP for models
whose training state does not fit one device.

`FineTuner` detects `torchrun`'s environment (WORLD_SIZE > 1) and then:
- sets up the process group (NCCL on GPUs, gloo on CPUs) and one device per process;
- wraps the model after freezing, so frozen parameters never need a gradient exchange:
  `distributed="ddp"` (the default, "auto") in `DistributedDataParallel`; `distributed="fsdp"` with
  FSDP2's `fully_shard` on every transformer block (found by `find_parts`, as for freezing) and then
  on the root, so parameters, gradients and optimizer state are sharded across processes and each
  block's weights are gathered only while it runs;
- splits every micro-batch of the global order across processes: each process sees a disjoint
  share, the target count is that of the whole step (every process knows it without talking), and
  the loss is scaled by the world size to undo the gradient averaging of DDP (and FSDP's
  reduce-scatter), so the gradient equals one process with the same effective batch;
- skips the gradient exchange on all but the last micro-batch of a step (`no_sync`, or FSDP2's
  `set_requires_gradient_sync(False)`);
- evaluates a disjoint shard per process; metrics and the loss are combined across processes;
  under FSDP each process gathers the full weights for the evaluation (`unsharded`), so processes
  may run different numbers of forwards (uneven shards, generation);
- logs, shows progress and writes checkpoints from rank 0 only; under FSDP every process takes part
  in gathering a full, unsharded state dict (`full_state_dict`, `optimizer_state_dict`), which rank 0
  writes in the same format as one process, so checkpoints resume with any number of processes
  and saved models load with transformers' Auto classes.

Example (2 processes on one machine)::

    torchrun --nproc_per_node=2 train.py
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
STRATEGIES = ("auto", "ddp", "fsdp")
log = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    """Where this process stands: rank, world size, its device; a single process when not launched.

    `strategy` is "ddp" or "fsdp" (how the model is wrapped when `world_size > 1`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @classmethod
    def from_env(cls, strategy: str = "auto") -> DistributedContext:
        if strategy not in STRATEGIES:
            raise ValueError(f"distributed must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}.")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        chosen = "fsdp" if strategy == "fsdp" else "ddp"
        if world <= 1:
            return cls(strategy=chosen)
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")), strategy=chosen)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def fsdp(self) -> bool:
        """True when the model is (or will be) sharded with FSDP."""
        return self.enabled and self.strategy == "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        if requested:
            return torch.device(requested)
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return torch.device("cpu")

    def check(self, freezer: Any, callbacks: Sequence[Any], precision: Any = None) -> None:
        """Refuse, before anything is loaded, what this strategy cannot train; say what to use instead."""
        if not self.enabled:
            return
        engine = "FSDP" if self.fsdp else "DistributedDataParallel"
        if getattr(freezer, "unfreeze_every", None):
            raise ValueError(f"Gradual unfreezing changes the trainable parameters during training, which {engine} "
                             "does not allow. Use a fixed LayerFreezer (e.g. LayerFreezer(train_last=2)) with torchrun.")
        if not self.fsdp:
            return
        if getattr(freezer, "cache_prefix", False):
            raise ValueError("LayerFreezer(cache_prefix=True) replaces the forward of the frozen blocks, which FSDP "
                             "shards and gathers itself. Use cache_prefix=False (the frozen prefix still runs without "
                             "autograd) or distributed='ddp'.")
        from ..regularizers.early_stopping import EarlyStopping
        from ..regularizers.l2sp import L2SP

        for cb in callbacks:
            if isinstance(cb, L2SP):
                raise ValueError("L2SP keeps a copy of the starting weights and reads the parameters outside the "
                                 "forward pass, where FSDP holds only this process's shard. Use distributed='ddp' "
                                 "with L2SP, or WeightDecay under FSDP.")
            if isinstance(cb, EarlyStopping) and cb.restore_best:
                raise ValueError("EarlyStopping(restore_best=True) keeps a copy of the best weights, which FSDP holds "
                                 "in shards. Use EarlyStopping(..., restore_best=False) under FSDP (with "
                                 "save_every, the checkpoint of the best step holds its weights), or distributed='ddp'.")
        if getattr(precision, "use_scaler", False):
            raise ValueError("fp16 needs a loss scaler, whose overflow check would see only this process's shard of "
                             "the gradients under FSDP. Use precision='bf16' or 'fp32' with distributed='fsdp', or "
                             "distributed='ddp' (precision='auto' picks fp16 on GPUs without bf16).")

    def init(self, device: torch.device) -> None:
        """Join the process group (once per process)."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        # the group this library made is torn down before the interpreter exits: left to process exit,
        # gloo's worker threads are killed mid-flight and the process can abort ("terminate called
        # without an active exception", exit -6) after all its work is done
        atexit.register(_destroy_process_group)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model to run forward/backward through: DDP over the trainable parameters, or the model
        itself sharded in place with FSDP2 (per transformer block, then the root)."""
        if not self.enabled:
            return model
        if self.fsdp:
            return self._fully_shard(model, device)
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)

    def _fully_shard(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from ..freezing.blocks import BlockDiscoveryError, find_parts

        if isinstance(model, FSDPModule):  # a second fit() on the same tuner: already sharded
            return model
        mesh = init_device_mesh(device.type, (self.world_size,))
        try:
            blocks = [b.module for b in find_parts(model).blocks]
        except BlockDiscoveryError:
            blocks = []
            log.warning("FSDP: no transformer blocks found in %s; sharding it as one unit (each process gathers "
                        "all the weights at each forward)", type(model).__name__)
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        log.info("FSDP: %s sharded over %d processes (%d blocks + the root)", type(model).__name__,
                 self.world_size, len(blocks))
        return model

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's disjoint share: every world_size-th item, starting at its rank."""
        return list(items[self.rank:: self.world_size]) if self.enabled else list(items)

    def no_sync(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient exchange on all but the last micro-batch of a step."""
        if not self.enabled or last:
            return contextlib.nullcontext()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            return _fsdp_no_sync(model)
        if hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def unsharded(self, model: torch.nn.Module | None) -> Iterator[None]:
        """Under FSDP, hold the full weights on every process for the duration (evaluation, prediction):
        one all-gather per block on entry, then forwards need no communication, so processes may run
        different numbers of them. Needs memory for the full weights (not gradients or optimizer
        state). A no-op otherwise. Every process must enter it together."""
        fsdp_module = _fsdp_module_class()
        if not self.fsdp or model is None or fsdp_module is None or not isinstance(model, fsdp_module):
            yield
            return
        modules = [m for m in model.modules() if isinstance(m, fsdp_module)]
        for m in modules:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in modules:  # training resumes as FSDP sets it up: blocks reshard after forward, the root not
                m.set_reshard_after_forward(m is not model, recurse=False)
            model.reset_iter_state()  # reshard everything and forget the evaluation's forward order

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the full (unsharded) weights as CPU tensors on rank 0 (`{}` on the others; every
        process must call it); tied weights once, under their first name. None when the model is not
        sharded: use the model as it is."""
        if not self._sharded(model):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        first: dict[int, str] = {}
        aliases = {n for n, p in model.named_parameters(remove_duplicate=False) if first.setdefault(id(p), n) != n}
        return {k: v for k, v in weights.items() if k not in aliases} if self.is_main else {}

    def load_state_dict(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load full weights into `model` (sharded or not); returns (missing, unexpected) keys."""
        if not self._sharded(model):
            result = model.load_state_dict(weights, strict=False)
            return list(result.missing_keys), list(result.unexpected_keys)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        expected = set(model.state_dict())
        result = set_model_state_dict(model, {k: v for k, v in weights.items() if k in expected},
                                      options=StateDictOptions(full_state_dict=True, strict=False))
        return list(result.missing_keys), [k for k in weights if k not in expected]

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, Any] | None:
        """`optimizer.state_dict()`; under FSDP with every sharded state gathered to a full CPU tensor,
        in the same format as one process, on rank 0 (None on the others; every process must call it)."""
        state = optimizer.state_dict()
        if not self._sharded(model):
            return state
        from torch.distributed.tensor import DTensor

        full: dict[int, dict[str, Any]] = {}
        for key in sorted(state["state"]):  # the same order on every process: one all-gather per tensor
            full[key] = {}
            for name, value in state["state"][key].items():
                if isinstance(value, DTensor):
                    value = value.full_tensor()
                full[key][name] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
            if not self.is_main:
                del full[key]
        return {"state": full, "param_groups": state["param_groups"]} if self.is_main else None

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                                  saved: dict[str, Any]) -> None:
        """Load a full optimizer state (as `optimizer_state_dict` writes it); under FSDP each process
        keeps its own shard of every state tensor (no communication)."""
        if not self._sharded(model):
            optimizer.load_state_dict(saved)
            return
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = [p for group in optimizer.param_groups for p in group["params"]]
        state: dict[int, dict[str, Any]] = {}
        for key, values in saved["state"].items():
            param = params[int(key)] if int(key) < len(params) else None
            state[key] = {}
            for name, value in values.items():
                if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                              src_data_rank=None)
                state[key][name] = value
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _sharded(self, model: torch.nn.Module | None) -> bool:
        fsdp_module = _fsdp_module_class()
        return self.fsdp and fsdp_module is not None and isinstance(model, fsdp_module)


def _fsdp_module_class() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return None
    return FSDPModule


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _destroy_process_group() -> None:
    """Leave together, then tear down: rank 0 hosts the rendezvous store, and a rank that tears down
    while another still talks to it can abort. The barrier is bounded (gloo), so a crashed peer does
    not hold the exit for the group's 30-minute timeout."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # a peer is gone: tear down anyway
        pass
    dist.destroy_process_group()


@contextlib.contextmanager
def main_first(ctx: DistributedContext) -> Iterator[None]:
    """Let rank 0 do something first (e.g. write a folder), the others after."""
    if not ctx.is_main:
        ctx.barrier()
    yield
    if ctx.is_main:
        ctx.barrier()


def is_main_process(state: Any = None) -> bool:
    """False on the processes other than rank 0 under torch.distributed (they log nothing): the
    run's own view (``state.is_main_process``) when there is one, else torch.distributed's rank."""
    main = getattr(state, "is_main_process", None)
    if main is not None:
        return bool(main)
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
