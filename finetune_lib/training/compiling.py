"""`FineTuner(compile=True)`: the training forward and backward run through `torch.compile`.

`fit` trains through `torch.compile(model)`, a wrapper that shares the model's parameters; the model
itself is never replaced. So `tuner.model`, its `state_dict` keys, checkpoints, `save()` and resume
are the same as without compiling (a checkpoint of a compiled run resumes with or without
`compile`), and evaluation, `predict` and generation run the model eagerly: their shapes change from
batch to batch (and token by token when generating), where compiling costs more than it saves.

What changes when it is on:

- the first training steps are slower while TorchInductor compiles (tens of seconds on a CPU);
  a new batch shape compiles once more, after which shapes are treated as dynamic. Fixed shapes,
  such as packed rows (`Preprocessor(pack=True)`), compile once;
- the CPU patches `fit` otherwise applies are skipped: the frozen-weight casts (`frozen_casts`),
  the SDPA kernel choice for short batches (`cpu_attention`) and, with `cpu_speedups=True`, the model
  patches of `finetune_lib.speedups` (fast dropout, counter-dropout attention, reused embedding
  gradients): the compiler fuses dropout into the surrounding kernels and chooses its own;
- under DDP the model is compiled before it is wrapped; FSDP is refused (its per-block sharding
  hooks need per-block compiling), and so is `LayerFreezer(cache_prefix=True)` (it swaps block
  forwards and replays cached outputs from Python during training).

A missing compiler toolchain (a C++ compiler on a CPU, Triton on a GPU) is found when the
`FineTuner` is built; any other failure of the compiler surfaces at the first step as `CompileError`,
with the fix.

Example:
    >>> tuner = FineTuner(model, "causal_lm", tokenizer=tok, compile=True,
    ...                   preprocessor=Preprocessor(pack=True, max_length=1024))
    >>> tuner.fit(train)          # the first steps compile; tuner.model is the plain model
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

log = logging.getLogger(__name__)

#: the `torch.compile` backend used for training
BACKEND: Any = "inductor"

_FIX = "Install it, or pass compile=False to train without compiling (the same training, at eager speed)."


class CompileError(RuntimeError):
    """torch.compile cannot compile the model here; the message says what to install or change."""


def check_compile(device: torch.device, fsdp: bool = False, freezer: Any = None) -> None:
    """Refuse, before anything is loaded, what `compile=True` cannot do here (see the module docstring).

    Raises:
        ValueError: under FSDP, or with `LayerFreezer(cache_prefix=True)`.
        CompileError: when torch.compile or its toolchain for `device` is missing.
    """
    if fsdp:
        raise ValueError("compile=True is not supported with distributed='fsdp' (FSDP's sharding hooks need each "
                         "block compiled on its own). Use distributed='ddp' with compile=True, or compile=False "
                         "with FSDP.")
    if getattr(freezer, "cache_prefix", False):
        raise ValueError("LayerFreezer(cache_prefix=True) replays the frozen blocks' outputs from a cache kept in "
                         "Python, which torch.compile would trace around. Use compile=False with it, or "
                         "cache_prefix=False.")
    problem = missing_toolchain(device)
    if problem:
        raise CompileError(f"compile=True needs {problem}. {_FIX}")


def missing_toolchain(device: torch.device) -> str | None:
    """What torch.compile lacks to compile for `device` (None when nothing is known to be missing)."""
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported

        supported = is_dynamo_supported()
    except ImportError:  # pragma: no cover - a torch without these helpers: the first step will tell
        return None
    except Exception:  # torch raises here for a Python version it does not support yet
        supported = False
    if not supported:
        return (f"a Python version that torch.compile supports (torch {torch.__version__} does not support "
                f"Python {sys.version.split()[0]} or this platform)")
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # pragma: no cover
            return None
        try:
            get_cpp_compiler()
        except Exception:
            return "a C++ compiler on a CPU (g++ or clang++ on PATH, or one named by the CXX environment variable)"
    elif device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover
            return None
        if not has_triton():
            return "Triton on a GPU (pip install triton; it comes with torch's CUDA wheels on Linux)"
    return None


def for_training(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """The module `fit` runs forward through: `torch.compile(model)` (sharing its parameters) when
    `enabled`, else `model` itself."""
    if not enabled:
        return model
    log.info("compiling the training forward with torch.compile (backend %s); the first steps are slower", BACKEND)
    return torch.compile(model, backend=BACKEND)


def compile_failure(error: BaseException) -> CompileError | None:
    """A `CompileError` that explains `error` when the compiler raised it (to raise `from error`), else None."""
    from torch._dynamo.exc import TorchDynamoException

    if not isinstance(error, TorchDynamoException):
        return None
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CompileError(f"torch.compile failed to compile the training step ({type(error).__name__}: {first[:300]}). "
                        "TorchInductor needs a working C++ compiler on a CPU (g++ or clang++, or CXX) and Triton on "
                        f"a GPU. {_FIX} With compile=False an error in the model itself shows plainly.")
