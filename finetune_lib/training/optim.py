"""The optimizer and the learning-rate schedule.

`parameter_groups` splits trainable parameters into groups by (decay or not, learning-rate scale).
Biases and the weights of normalization layers get no weight decay; they are found by module type
(any `LayerNorm`/`RMSNorm`/`BatchNorm`/`GroupNorm`-like module, including models' own classes such as
`LlamaRMSNorm` or `T5LayerNorm`), with 1-d parameters as the fallback, not by parameter name alone.

`Schedule` sets each group's learning rate to `group["initial_lr"] * factor(step)`; unlike
`torch.optim.lr_scheduler.LambdaLR` it keeps working when groups are added during training (gradual
unfreezing), because it reads the groups at every step instead of a list captured at creation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..modeling import NORM_TYPES, WEIGHT_TYPES, is_norm_module

__all__ = ["NORM_TYPES", "WEIGHT_TYPES", "Schedule", "add_parameter_groups", "build_optimizer", "check_optimizer_factory",
           "check_schedule",
           "clip_gradients", "is_norm_module", "no_decay_parameter_names", "parameter_groups", "schedule_factor"]

def no_decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that should not be decayed: biases, normalization weights, 1-d tensors."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        norm = is_norm_module(module)
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if norm or param_name == "bias" or param.ndim < 2:
                names.add(full)
    return names


def parameter_groups(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    lr_scale: Callable[[str], float] | None = None,
    names: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the trainable parameters of `model`.

    Args:
        model: the model.
        learning_rate: base learning rate.
        weight_decay: decoupled weight decay for the parameters that take it.
        lr_scale: optional `name -> multiplier` (layer-wise learning-rate decay).
        names: restrict to these parameter names (default: every parameter with `requires_grad`).

    Returns:
        Groups with keys `params`, `names`, `lr`, `initial_lr`, `weight_decay` and `apply_decay`
        (False for biases and normalization weights, whose `weight_decay` is always 0).
    """
    no_decay = no_decay_parameter_names(model)
    wanted = set(names) if names is not None else None
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or (wanted is not None and name not in wanted) or id(param) in seen:
            continue
        seen.add(id(param))  # tied weights appear once
        decay = name not in no_decay
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        key = (decay, scale)
        if key not in groups:
            lr = learning_rate * scale
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": weight_decay if decay else 0.0,
                "apply_decay": decay,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def check_optimizer_factory(factory: Any) -> Any:
    """`factory` when it is None or callable; a TypeError with the expected form otherwise."""
    if factory is not None and not callable(factory):
        raise TypeError("optimizer must be a factory: a callable taking the parameter groups and returning an "
                        f"optimizer, e.g. lambda groups: torch.optim.SGD(groups, momentum=0.9); got {factory!r}.")
    return factory


def build_optimizer(groups: list[dict[str, Any]], learning_rate: float, device: torch.device,
                    factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """The optimizer over `groups`: `factory(groups)` when given, else AdamW with the fused kernel (CUDA
    and, since torch 2.4, CPU; measured here about 10x faster per step than the foreach kernel on
    MiniLM), falling back to foreach where fused fails.

    Each group carries its own `lr` and `weight_decay` (decay 0 for biases and normalization weights),
    so a factory only chooses the algorithm and its other hyperparameters.

    Example:
        >>> build_optimizer(groups, 1e-3, torch.device("cpu"), lambda g: torch.optim.SGD(g, momentum=0.9))
    """
    if not groups:
        raise ValueError(
            "No trainable parameters: every parameter is frozen. Train at least one block "
            "(for example LayerFreezer(train_last=1)) or leave the head trainable."
        )
    if factory is not None:
        optimizer = factory(groups)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"The optimizer factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer: "
                            "return one built from the groups it is given, e.g. torch.optim.SGD(groups, momentum=0.9).")
        given = {id(p) for g in groups for p in g["params"]}
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if given != held:
            raise ValueError(f"The optimizer factory's optimizer holds {len(held)} of the {len(given)} trainable "
                             "tensors it was given (or others): build it from the groups passed in, unchanged.")
        for group in optimizer.param_groups:  # the schedule scales each group's own starting rate
            group.setdefault("initial_lr", group["lr"])
        return optimizer
    kwargs: dict[str, Any] = {"lr": learning_rate, "betas": betas, "eps": eps}
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def add_parameter_groups(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]], step_factor: float) -> None:
    """Add groups to a live optimizer (gradual unfreezing), at the schedule's current factor."""
    for group in groups:
        group = dict(group)
        group["lr"] = group["initial_lr"] * step_factor
        optimizer.add_param_group(group)


SCHEDULES = ("linear", "cosine", "constant")

#: a schedule of your own: `(step, total_steps) -> multiplier of the learning rate` (warmup included)
ScheduleFunction = Callable[[int, int], float]


def check_schedule(schedule: Any, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> None:
    """Refuse an unknown schedule name, a non-callable, or warmup settings beside a callable schedule."""
    if callable(schedule):
        if warmup_steps or warmup_ratio:
            raise ValueError("A callable schedule shapes the whole run, warmup included: set warmup_steps and "
                             "warmup_ratio to 0 and warm up inside your function (it gets step and total_steps).")
        return
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}, or pass a function "
                         "(step, total_steps) -> learning-rate multiplier.")


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float, skip_when_within: bool) -> torch.Tensor:
    """Clip the gradients' total 2-norm to `max_norm` (torch's formula); returns the norm before clipping.

    `skip_when_within=True` reads the norm on the host and multiplies only when clipping changes
    something (torch's `clip_grad_norm_` multiplies every gradient by a coefficient of 1.0
    otherwise: a full pass over 22.7M gradients on MiniLM, about 4% of a CPU step). The result is
    identical. Use it where a host read is free (CPU); on CUDA it would synchronize every step.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if not skip_when_within or not bool(total + 1e-6 <= max_norm):
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def schedule_factor(kind: str | ScheduleFunction, step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps.

    `kind` is a name from `SCHEDULES` (after linear warmup over `warmup_steps`), or a function
    `(step, total_steps) -> multiplier` that is the whole schedule.
    """
    if callable(kind):
        factor = float(kind(step, total_steps))
        if not math.isfinite(factor) or factor < 0:
            raise ValueError(f"The schedule function returned {factor!r} at step {step}: it must return a finite "
                             "multiplier >= 0 of the learning rate.")
        return factor
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"Unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}.")


class Schedule:
    """Warmup then linear, cosine or constant decay, or your own function; sets every group's `lr` at
    each step.

    Example:
        >>> sched = Schedule(optimizer, "cosine", warmup_steps=10, total_steps=100)
        >>> sched = Schedule(optimizer, lambda step, total: 0.5 ** (step // 100), 0, 1000)
        >>> optimizer.step(); sched.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str | ScheduleFunction, warmup_steps: int,
                 total_steps: int):
        check_schedule(kind, warmup_steps)
        self.optimizer, self.kind = optimizer, kind
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.last_step = 0
        self._apply()

    def factor(self) -> float:
        return schedule_factor(self.kind, self.last_step, self.warmup_steps, self.total_steps)

    def _apply(self) -> None:
        f = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"]) * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
