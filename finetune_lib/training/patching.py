"""Module forwards replaced for the length of a block, by instance attribute, then restored.

`fit` uses this for its CPU fast paths (`embedding_grad`, `fast_dropout`): the class and any saved or
pickled model are untouched, and the patch goes away even when the block raises.

Example:
    >>> with patched_forwards([model.dropout], lambda m: my_forward) as n:   # n == 1
    ...     model(**batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn


@contextlib.contextmanager
def patched_forwards(modules: Sequence[nn.Module], make_forward: Callable[[Any], Callable[..., Any]]) -> Iterator[int]:
    """Within the block each of `modules` runs `make_forward(module)` as its forward; yields how many."""
    for m in modules:
        m.forward = make_forward(m)  # type: ignore[method-assign]
    try:
        yield len(modules)
    finally:
        for m in modules:
            del m.forward
