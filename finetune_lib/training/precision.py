"""Mixed precision: choose it from the hardware, and give the loop its autocast and loss scaler.

`precision="auto"` picks:
- bf16 autocast on a CUDA GPU that supports bf16 (Ampere and newer);
- fp16 autocast with a loss scaler on an older CUDA GPU;
- bf16 autocast on a CPU with AVX-512 BF16 or AMX (fast bf16 matmuls);
- fp32 elsewhere (bf16 on a CPU without those units is emulated and slower than fp32).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cuda_bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_supported() -> bool:
    """True when the CPU has native bf16 matmul units (AVX-512 BF16 or AMX)."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


@dataclass(frozen=True)
class Precision:
    """The resolved precision.

    Attributes:
        name: "bf16", "fp16" or "fp32".
        dtype: the autocast dtype (None for fp32).
        device_type: "cuda" or "cpu".
        use_scaler: fp16 on CUDA needs a loss scaler.
        reason: why it was chosen (logged).
    """

    name: str
    dtype: torch.dtype | None
    device_type: str
    use_scaler: bool
    reason: str

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def autocast_factory(self) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        return self.autocast

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler("cuda") if self.use_scaler else None


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """Turn a precision setting and a device into a `Precision`; logs the choice."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Choose one of: {', '.join(PRECISIONS)}.")
    dev = device.type
    if precision == "auto":
        if dev == "cuda":
            if cuda_bf16_supported():
                choice = Precision("bf16", torch.bfloat16, dev, False, "auto: CUDA GPU with bf16 support")
            else:
                choice = Precision("fp16", torch.float16, dev, True, "auto: CUDA GPU without bf16; fp16 with loss scaling")
        elif dev == "cpu" and cpu_bf16_supported():
            choice = Precision("bf16", torch.bfloat16, dev, False, "auto: CPU with AVX-512 BF16/AMX")
        else:
            choice = Precision("fp32", None, dev, False, f"auto: {dev} without fast bf16 units")
    elif precision == "bf16":
        if dev == "cuda" and not cuda_bf16_supported():
            raise ValueError("precision='bf16' was asked but this GPU does not support bf16. Use 'fp16' or 'auto'.")
        choice = Precision("bf16", torch.bfloat16, dev, False, "asked")
    elif precision == "fp16":
        if dev == "cpu":
            raise ValueError("precision='fp16' needs a CUDA GPU; on a CPU use 'bf16', 'fp32' or 'auto'.")
        choice = Precision("fp16", torch.float16, dev, dev == "cuda", "asked")
    else:
        choice = Precision("fp32", None, dev, False, "asked")
    log.info("precision: %s (%s)", choice.name, choice.reason)
    return choice
