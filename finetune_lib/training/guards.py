"""Guards around the training step: non-finite losses, out-of-memory, and stop signals.

- `NonFiniteLossError`: a NaN or inf loss (or gradient norm) is caught *before* the optimizer step,
  so the weights and optimizer state are those of the step before, and the last checkpoint is
  untouched. `on_nonfinite="skip"` drops that step's gradients and goes on instead.
- `is_out_of_memory`: recognizes CUDA and CPU allocation failures, so the loop can split its
  micro-batches in two (same effective batch, same math) and try the step again.
- `StopSignals`: SIGTERM and SIGINT during `fit` finish the current step, write a checkpoint and
  then stop (`KeyboardInterrupt` for SIGINT, `SystemExit(128 + signal)` for SIGTERM).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import torch

log = logging.getLogger("finetune_lib")

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


def nonfinite_message(what: str, step: int, epoch: int, batch_in_epoch: int, examples: list[int],
                      last_checkpoint: str | None) -> str:
    kept = f"The last checkpoint ({last_checkpoint}) is intact. " if last_checkpoint else ""
    return (f"{what} is not finite at step {step + 1} (epoch {epoch}, micro-batches {batch_in_epoch}.., "
            f"examples {examples[:16]}{'...' if len(examples) > 16 else ''}). The weights and optimizer state are "
            f"those before this step. {kept}Lower the learning rate, use precision='fp32' or 'bf16' instead of "
            "'fp16', set max_grad_norm, check these examples, or pass on_nonfinite='skip' to skip such steps.")


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
