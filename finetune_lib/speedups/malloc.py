"""Freed CPU memory kept in the process while a run works, glibc's defaults put back when it ends.

**Gain.** On a CPU every training step allocates and frees the same tensors: the bf16 copies of the
weights that autocast makes for each forward, activations, gradients. glibc's `malloc` hands large
freed blocks back to the kernel (`munmap`, or trimming the top of the heap), so the next step's
allocation of the same size starts from fresh pages, and the first write to each 4 KiB page is a
page fault. On the benchmark machine, casting a 384 x 1536 weight to bf16 took 1.5 ms on fresh pages
and 0.22 ms on reused ones; together with `embedding_grad`, a MiniLM training epoch ran 15-20%
faster (BENCHMARKS.md). Intel's PyTorch tuning guide recommends jemalloc or tcmalloc (`LD_PRELOAD`)
for the same reason; those stack with this.

**What it does.** `reuse_freed_memory()` sets three of glibc's `mallopt` parameters on entering and
sets glibc's defaults back on leaving, then calls `malloc_trim(0)` so the memory kept goes back to
the kernel:

| parameter | during the block | on leaving (glibc's default) |
|---|---|---|
| `M_MMAP_THRESHOLD` | 32 MiB (glibc's maximum): blocks below it come from the heap and are reused | 128 KiB |
| `M_TRIM_THRESHOLD` | 1 GiB of free memory kept at the top of the heap | 128 KiB |
| `M_TOP_PAD` | 64 MiB: the heap grows in larger steps | 128 KiB |

**Caveats.** The settings are process-wide while the block runs (other threads allocate under them
too); scopes nest and overlap (two runs in two threads), and the defaults come back when the last
one ends. `mallopt` cannot read values back, so what comes back is glibc's defaults, not whatever
the process had before (a program that set its own values must set them again). Setting
`M_MMAP_THRESHOLD` turns off glibc's dynamic mmap threshold (which starts at 128 KiB and rises as
large blocks are freed) for the rest of the process: it cannot be turned back on, so afterwards the
threshold stays fixed at 128 KiB. Inside the block up to 1 GiB of freed memory stays in the resident
set; the peak is unchanged in the benchmarks (workload 4). Only on Linux with glibc (musl, macOS and
Windows are left alone). The environment variable `FINETUNE_LIB_MALLOC=system` turns it off.

Used by `FineTuner(cpu_speedups=True)` on a CPU, for the length of `fit`, `evaluate` and `predict`.

Example:
    >>> with reuse_freed_memory() as applied:   # applied: True where glibc took the settings
    ...     train()
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

#: the values set for the block, in bytes (32 MiB is the largest mmap threshold glibc accepts on 64-bit)
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}

#: glibc's defaults, set back when the last block ends (malloc.c / malloc-machine.h)
DEFAULTS = {M_MMAP_THRESHOLD: 128 << 10, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}

_lock = threading.Lock()
_depth = 0  # blocks open now, in any thread
_applied = False  # whether the open blocks' settings were taken


def glibc() -> Any | None:
    """The C library, where it is glibc on Linux and `FINETUNE_LIB_MALLOC=system` is not set; else None."""
    if os.environ.get("FINETUNE_LIB_MALLOC", "").lower() == "system":
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def apply_settings(libc: Any, settings: dict[int, int]) -> bool:
    """Set each of `settings` (parameter -> bytes) with `libc.mallopt`; True when glibc took them all."""
    accepted = [libc.mallopt(param, value) == 1 for param, value in settings.items()]  # each one tried
    return all(accepted)


def restore_defaults(libc: Any) -> None:
    """Set glibc's defaults back (`DEFAULTS`) and return the free memory kept to the kernel."""
    apply_settings(libc, DEFAULTS)
    libc.malloc_trim(0)


def trim_free_memory() -> bool:
    """Hand the heap's free memory back to the kernel once (`malloc_trim(0)`); no setting changes, so
    nothing lasts past the call. False where there is no glibc (or `FINETUNE_LIB_MALLOC=system`)."""
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc keeps freed memory for reuse (see the module docstring); yields whether
    the settings are in effect. glibc's defaults come back when the last open block ends."""
    global _depth, _applied
    libc = glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _applied = apply_settings(libc, SETTINGS)
            if not _applied:
                log.debug("glibc refused a mallopt setting; freed memory is reused only in part")
        _depth += 1
        applied = _applied
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                restore_defaults(libc)
