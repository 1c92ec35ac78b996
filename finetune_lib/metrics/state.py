"""State helpers shared by `Metric` and `MetricSuite`: combining states (padding ones that grew)
and the torch.distributed collectives they use (all of them no-ops in a single process)."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist

State = torch.Tensor | list


def reduce_op(reduce: str) -> Any:
    """The torch.distributed reduce op of a "sum" / "max" / "min" state."""
    return {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[reduce]


def identity(dtype: torch.dtype, reduce: str) -> float | int:
    """The value that leaves `reduce` unchanged (the padding of a grown state)."""
    if reduce == "sum" or dtype == torch.bool:
        return 0
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    return info.min if reduce == "max" else info.max


def pad_to(t: torch.Tensor, shape: tuple[int, ...], fill: float | int = 0) -> torch.Tensor:
    """`t` padded at the end of each dimension to `shape` with `fill`."""
    if tuple(t.shape) == tuple(shape):
        return t
    out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def combine(a: State, b: State, reduce: str) -> State:
    """Two states combined by `reduce` (see `Metric.add_state`)."""
    if reduce == "cat":
        if isinstance(a, list):
            return a + list(b)
        return torch.cat([a, torch.as_tensor(b).to(a.device)])
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    b = b.to(a.device)
    if a.dim() != b.dim():
        raise ValueError(f"cannot combine states of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))
    a, b = pad_to(a, shape, identity(a.dtype, reduce)), pad_to(b, shape, identity(b.dtype, reduce))
    if reduce == "sum":
        return a + b
    return torch.maximum(a, b) if reduce == "max" else torch.minimum(a, b)


def is_distributed() -> bool:
    """True when torch.distributed is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """The device collectives run on: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_objects(obj: Any) -> list[Any]:
    """`obj` from every process, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_state(value: State, reduce: str) -> State:
    """`value` combined over all processes: "cat" states are all-gathered (rank order), others
    all-reduced after padding every process's tensor to the largest shape."""
    if reduce == "cat":
        local = value.cpu() if isinstance(value, torch.Tensor) else value
        return functools.reduce(lambda a, b: combine(a, b, "cat"), all_gather_objects(local))
    assert isinstance(value, torch.Tensor)
    device = comm_device()
    t = value.to(device)
    if t.dim():
        shape = torch.tensor(t.shape, device=device, dtype=torch.int64)
        dist.all_reduce(shape, op=dist.ReduceOp.MAX)
        t = pad_to(t, tuple(shape.tolist()), identity(t.dtype, reduce))
    dist.all_reduce(t, op=reduce_op(reduce))
    return t.to(value.device)
