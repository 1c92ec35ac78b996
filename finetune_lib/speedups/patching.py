"""Module forwards replaced for the length of a block, by instance attribute, then put back.

The CPU paths of `fit` use this (`frozen_casts`, and under `cpu_speedups=True` the embedding and
dropout patches): the class and any saved or pickled model are untouched, and the patch goes away
even when the block raises. A forward already set on an instance (accelerate's hooks set one) is
kept and put back afterwards, the very same object; and a forward that someone else sets on the
instance inside the block is left in place.

Example:
    >>> with patched_forwards([model.dropout], lambda m: my_forward) as n:   # n == 1
    ...     model(**batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn

_NONE = object()  # the instance had no forward of its own


def own_forward(module: nn.Module) -> bool:
    """True when `module` has a forward set on the instance (a hook's wrapper, a user's function)."""
    return "forward" in vars(module)


@contextlib.contextmanager
def patched_forwards(modules: Sequence[nn.Module], make_forward: Callable[[Any], Callable[..., Any]]) -> Iterator[int]:
    """Within the block each of `modules` runs `make_forward(module)` as its forward; yields how many.

    On exit each module gets back what it had: its own instance forward if it had one, else the
    class's forward (the instance attribute is removed).
    """
    saved = [(m, vars(m).get("forward", _NONE)) for m in modules]
    ours = []
    for m, _ in saved:
        m.forward = make_forward(m)  # type: ignore[method-assign]
        ours.append(vars(m)["forward"])
    try:
        yield len(modules)
    finally:
        for (m, previous), patch in zip(saved, ours):
            if vars(m).get("forward", _NONE) is not patch:
                continue  # replaced inside the block by someone else: theirs stays
            if previous is _NONE:
                del m.forward
            else:
                m.forward = previous  # type: ignore[method-assign]
