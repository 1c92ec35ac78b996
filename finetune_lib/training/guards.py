"""Guards around the training step: non-finite losses, out-of-memory, and stop signals.

- `NonFiniteLossError`: a NaN or inf loss (or gradient norm) is caught *before* the optimizer step,
  so the weights and optimizer state are those of the step before, and the last checkpoint is
  untouched. `on_nonfinite="skip"` drops that step's gradients and goes on instead. The gradients
  are checked with clipping off too (`gradient_norm`), and no checkpoint is ever written with
  non-finite weights or optimizer state (`nonfinite_tensors`, used by `checkpoint.py`), so "the last
  checkpoint is intact" is only said of a checkpoint checked finite when it was written.
- `is_out_of_memory`: recognizes CUDA and CPU allocation failures, so the loop can split its
  micro-batches in two (same effective batch, same math) and try the step again.
- `StopSignals`: SIGTERM and SIGINT during `fit` finish the current step, write a checkpoint and
  then stop (`KeyboardInterrupt` for SIGINT, `SystemExit(128 + signal)` for SIGTERM).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch

from ..events import TrainState

log = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """A NaN or inf loss or gradient; raised before the weights changed."""


class OutOfMemoryError(RuntimeError):
    """Even one example per micro-batch does not fit."""


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and ("out of memory" in text or "can't allocate" in text
                                                                or "cannot allocate" in text or isinstance(error, MemoryError))


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The gradients' total 2-norm (None when no parameter has a gradient), for the non-finite check
    when clipping is off: NaN or inf when any gradient is. No host read (it stays on the device)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads, 2.0) if grads else None


def nonfinite_tensors(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors in `named` that hold a NaN or inf (one host read in all)."""
    names, flags = [], []
    for name, value in named:
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            local = value.to_local() if hasattr(value, "to_local") else value  # an FSDP shard: this process's part
            names.append(name)
            flags.append(torch.isfinite(local.detach()).all())
    if not flags:
        return []
    finite = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return [n for n, ok in zip(names, finite) if not ok]


def nonfinite_message(what: str, step: int, epoch: int, batch_in_epoch: int, examples: list[int],
                      last_checkpoint: str | None, model: torch.nn.Module | None = None) -> str:
    """The error for a non-finite loss or gradient at `step` (0-based).

    `last_checkpoint` must be a checkpoint this run wrote (checked finite when written: the writer
    refuses non-finite weights). With `model`, the weights are checked too: a diverged update (a
    learning rate far too high) leaves finite-looking losses behind for a step, then NaN weights.
    """
    bad = nonfinite_tensors(model.named_parameters()) if model is not None else []
    if bad:
        now = (f"The weights are those before this step, but they already hold NaN or inf values ({len(bad)} tensors, "
               f"e.g. {bad[:3]}): an earlier update diverged, so do not use them. ")
    else:
        now = "The weights and optimizer state are those before this step. "
    kept = (f"The last checkpoint ({last_checkpoint}) is intact: its weights and optimizer state were checked "
            "finite when it was written. ") if last_checkpoint else ""
    return (f"{what} is not finite at step {step + 1} (epoch {epoch}, micro-batches {batch_in_epoch}.., "
            f"examples {examples[:16]}{'...' if len(examples) > 16 else ''}). {now}{kept}Lower the learning rate, "
            "use precision='fp32' or 'bf16' instead of 'fp16', set max_grad_norm, check these examples, or pass "
            "on_nonfinite='skip' to skip such steps.")


class DeviceFiniteGuard:
    """The non-finite check without a host read per step (CUDA, one process or DDP), for a fused AdamW.

    Each step, `mark` computes on the device whether the step's loss and gradient norm are finite
    and hands the answer to the fused AdamW kernel as `found_inf` (as torch's GradScaler does), which
    leaves the weights, the moments and the step count untouched for a non-finite step. Such steps
    are counted on the device; `read()` brings the count to the host at log steps, where the run
    stops (`on_nonfinite="stop"`) or counts them as skipped (`"skip"`). The weights never take a
    non-finite update either way; what differs from the per-step check is when it is reported.

    Example:
        >>> guard = DeviceFiniteGuard(device)
        >>> ok = guard.mark(optimizer, loss, grad_norm); optimizer.step()
        >>> guard.read()   # non-finite steps since the last read
        0
    """

    def __init__(self, device: torch.device):
        self.count = torch.zeros((), device=device)
        self.read_so_far = 0

    @staticmethod
    def usable(optimizer: torch.optim.Optimizer) -> bool:
        """Only the fused Adam/AdamW kernels take `found_inf`."""
        return bool(optimizer.defaults.get("fused"))

    def mark(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
        ok = torch.isfinite(loss) if grad_norm is None else torch.isfinite(loss) & torch.isfinite(grad_norm)
        found = (~ok).to(torch.float32)
        optimizer.found_inf = found  # type: ignore[attr-defined]  # read by the fused kernel
        self.count += found
        return ok

    def read(self) -> int:
        """Non-finite steps since the last read (one host read)."""
        total = int(self.count.item())
        new, self.read_so_far = total - self.read_so_far, total
        return new


class StopSignals:
    """Context manager: records SIGTERM/SIGINT instead of dying mid-step (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: finishing this step, then writing a checkpoint and stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def raise_stop(self, checkpoint: str | None) -> None:
        where = (f"checkpoint written to {checkpoint}; continue with fit(..., resume=True)" if checkpoint
                 else "no output_dir was given, so nothing was saved")
        name = signal.Signals(self.received or signal.SIGINT).name
        log.warning("stopped by %s: %s", name, where)
        if self.received == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM)
        raise KeyboardInterrupt(f"stopped by {name}: {where}")


def stop_or_skip(state: TrainState, message: str, steps: int, streak_continues: bool, on_nonfinite: str) -> None:
    """Raise for on_nonfinite="stop"; otherwise count `steps` skipped steps in `state.extra` (and stop
    after 20 in a row)."""
    if on_nonfinite == "stop":
        raise NonFiniteLossError(message)
    state.extra["skipped_steps"] = state.extra.get("skipped_steps", 0) + steps
    streak = state.extra.get("skipped_in_a_row", 0) if streak_continues else 0
    state.extra["skipped_in_a_row"] = streak + steps
    if state.extra["skipped_in_a_row"] >= 20:
        raise NonFiniteLossError(f"20 steps in a row were not finite; training is diverging, not glitching. {message}")
    log.warning("skipped: %s", message)


def step_is_finite(window_loss: torch.Tensor, grad_norm: torch.Tensor | None, state: TrainState,
                   window: list[list[int]], on_nonfinite: str, model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer) -> bool:
    """False when this step must be skipped (its gradients are dropped); raises when it must stop.
    Syncs one scalar per step (free on a CPU)."""
    bad = not bool(torch.isfinite(window_loss)) and "loss"
    bad = bad or (grad_norm is not None and not bool(torch.isfinite(grad_norm)) and "gradient norm")
    if not bad:
        state.extra["skipped_in_a_row"] = 0
        return True
    optimizer.zero_grad(set_to_none=True)
    examples = [i for idx in window for i in idx]
    message = nonfinite_message(f"The {bad}", state.step, state.epoch, state.batch_in_epoch, examples,
                                state.extra.get("last_checkpoint"), model=model)
    stop_or_skip(state, message, 1, True, on_nonfinite)
    return False


def deferred_nonfinite(guard: DeviceFiniteGuard, state: TrainState, windows: int, on_nonfinite: str) -> int:
    """Read the device-side count of non-finite steps since the last log; stop or count them."""
    bad = guard.read()
    if not bad:
        state.extra["skipped_in_a_row"] = 0
        return 0
    message = (f"{bad} of the last {windows} steps (up to step {state.step}, epoch {state.epoch}) had a non-finite "
               "loss or gradient norm; their updates were skipped on the device, so the weights hold no "
               "non-finite update. Lower the learning rate, use precision='bf16' instead of 'fp16', set "
               "max_grad_norm, log every step (log_every=1) to find the step, or pass on_nonfinite='skip'.")
    stop_or_skip(state, message, bad, bad == windows, on_nonfinite)
    return bad


def split_after_out_of_memory(error: BaseException, state: TrainState, pieces: list[list[int]],
                              optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """After an out-of-memory error in a step: drop its partial work (outputs, loss, gradients) and ask
    for micro-batches half the size (`state.extra["micro_batch_split"]`), the same effective batch;
    raise `OutOfMemoryError` with the fixes when a micro-batch already holds one example."""
    state.outputs = state.loss = state.batch = None
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    largest = max(len(p) for p in pieces)
    if largest <= 1:
        raise OutOfMemoryError(
            "Out of memory with one example per micro-batch. Lower max_length in the Preprocessor, "
            "use precision='bf16', freeze more blocks (LayerFreezer), enable gradient checkpointing "
            "(gradient_checkpointing=True), or use a larger device.") from error
    state.extra["micro_batch_split"] = state.extra.get("micro_batch_split", 1) * 2
    log.warning("out of memory at step %d: micro-batches of %d examples split in two (%d per step, "
                "same effective batch)", state.step + 1, largest, len(pieces) * 2)
