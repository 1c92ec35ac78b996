"""Opt-in speed techniques for training on a CPU: each a pure function plus a thin hook.

`FineTuner` applies none of these by default: at its defaults a run keeps torch's semantics and
changes nothing process-wide. `FineTuner(cpu_speedups=True)` turns them all on for a run on a CPU
(see docs/topics/cpu-speed.md, which also lists what is on by default). Each module's docstring gives
the technique's measured gain and its caveats:

| module | technique | gain measured (MiniLM) | caveat |
|---|---|---|---|
| `malloc` | glibc keeps freed memory for reuse during `fit`, `evaluate`, `predict` | with `embedding_grad`: 15-20% per epoch | process-wide while it runs; glibc's defaults come back after |
| `embedding_grad` | large embedding tables write their gradient into one reused buffer | (with `malloc`) 12-13 ms of a ~150 ms step | the table's gradient bypasses autograd (hooks, `autograd.grad`) |
| `fast_dropout` | dropout masks from a vectorized counter-based generator | 1.07x per step frozen, 1.02x full | other masks than torch's |
| `attention` | attention-probability dropout with those masks, through transformers' attention interface | 1.05x per step frozen, 1.04x full | other masks than torch's |

`cpu_speedups_for(model)` is the hook `fit` uses: all model-scoped techniques for the length of a
block, put back afterwards; `reuse_freed_memory()` is the process-scoped one.

Example:
    >>> from finetune_lib.speedups import cpu_speedups_for, reuse_freed_memory
    >>> with reuse_freed_memory(), cpu_speedups_for(model):
    ...     model(**batch).loss.backward()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from . import fast_dropout  # the module (its function of the same name: fast_dropout.fast_dropout)
from .attention import counter_dropout_attention
from .embedding_grad import reused_embedding_grads
from .malloc import reuse_freed_memory
from .patching import patched_forwards


@dataclass
class Applied:
    """What `cpu_speedups_for` applied to a model.

    Attributes:
        embedding_tables: embedding tables writing their gradient into a reused buffer.
        dropout_modules: `nn.Dropout` modules drawing counter-based masks.
        attention: whether the model's attention draws its dropout with those masks.
    """

    embedding_tables: int = 0
    dropout_modules: int = 0
    attention: bool = False


@contextlib.contextmanager
def cpu_speedups_for(model: nn.Module, distributed: bool = False) -> Iterator[Applied]:
    """Within the block, `model` trains with the reused embedding gradients (not when `distributed`:
    DDP and FSDP need autograd's accumulation), fast dropout and counter-dropout attention; all are
    taken off `model` when the block ends, also when it raises. Yields what was applied."""
    with (reused_embedding_grads(model, not distributed) as tables, fast_dropout.fast_dropout(model) as dropouts,
          counter_dropout_attention(model) as attention):
        yield Applied(tables, dropouts, attention)


__all__ = ["Applied", "counter_dropout_attention", "cpu_speedups_for", "fast_dropout", "patched_forwards",
           "reuse_freed_memory", "reused_embedding_grads"]
