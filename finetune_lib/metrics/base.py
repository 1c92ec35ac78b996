"""`Metric`: the base of every streaming metric.

A metric keeps a small *state* (tensors, or lists for text) that `update()` grows batch by batch and
`compute()` turns into a value. The base owns everything generic about that state: `reset()`,
`merge()` of two metrics, `sync()` across processes and `clone()`. A subclass only registers its
state with `add_state()` and writes `update()` and `compute()`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, Literal

import torch

from .state import State, combine, is_distributed, sync_state

Reduce = Literal["sum", "cat", "max", "min"]
REDUCTIONS = ("sum", "cat", "max", "min")
INPUTS = ("classes", "logits", "text", "indicators", "values", "tags")


class NoDataError(ValueError):
    """`compute()` was called on a metric that has seen no data since its last `reset()`."""


def no_data(metric: Metric, detail: str = "") -> NoDataError:
    """The error a metric raises from `compute()` when it has nothing to compute from."""
    return NoDataError(
        f"{type(metric).__name__} ({metric.name!r}) has seen no data{detail}: call update(...) before "
        f"compute() (is the evaluation set or this slice empty?)."
    )


def _wrap_update(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def update(self: Metric, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        self._updates += 1
        return out

    return update


def _wrap_compute(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def compute(self: Metric) -> Any:
        if int(self._updates) == 0:
            raise no_data(self, " since the last reset()")
        return fn(self)

    return compute


class Metric:
    """Base class of a streaming metric (torchmetrics style).

    Contract for a subclass:

    * set the class attributes `name` (the result key; an instance may override it with
      `name=...`) and `input`, what `MetricSuite` feeds to `update()`:
      ``"classes"`` -> ``update(preds, target)`` with class ids,
      ``"logits"`` -> ``update(logits, target)`` with logits ``[B, T, V]`` (``[B, C]`` for
      classification) and aligned targets, ``"text"`` -> ``update(hypotheses, references)``,
      ``"indicators"`` -> ``update(preds, target)`` with 0/1 matrices ``[B, L]`` (multi-label),
      ``"values"`` -> ``update(preds, target)`` with numbers ``[B]`` (regression),
      ``"tags"`` -> ``update(predictions, references)`` with word-level tag lists, one per sentence
      (token classification; see `finetune_lib.metrics.entities`);
    * optionally set `tasks`, the tasks whose inputs the metric can read (None: every task that
      gives its `input`; "text" metrics need a task that generates), so that a `FineTuner` refuses
      the metric before training rather than at the first evaluation;
    * register every piece of state in `__init__` with `add_state()`; the state must stay small
      (counts, sums), except text, which may be kept in a list state with ``reduce="cat"``;
    * `compute()` returns a float (a non-scalar value, like a confusion matrix, is allowed: the
      suite reports it in `MetricSuite.last_artifacts` instead of its flat dict).

    `compute()` raises `NoDataError` when `update()` was never called since the last `reset()`.
    For confidence intervals, the suite asks for per-example statistics (`example_stats()`) and
    recomputes the value on resamples (`compute_from_stats()`); the defaults work for "classes" and
    "text" metrics; a "logits" metric overrides both (see `Perplexity`).

    Example:
        A user metric in a dozen lines: the mean length of generated text.

        >>> class MeanLength(Metric):
        ...     name = "mean_length"
        ...     input = "text"
        ...
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.add_state("chars", 0.0)  # python floats become float64 tensors
        ...         self.add_state("count", 0)  # python ints become int64 tensors
        ...
        ...     def update(self, hypotheses, references) -> None:
        ...         self.chars += sum(len(h) for h in hypotheses)
        ...         self.count += len(hypotheses)
        ...
        ...     def compute(self) -> float:
        ...         return float(self.chars / self.count)
        >>> m = MeanLength()
        >>> m.update(["abc", "a"], ["x", "y"])
        >>> m.compute()
        2.0
    """

    name: str = "metric"
    input: str = "classes"
    tasks: tuple[str, ...] | None = None  # the tasks it can run on; None: every task that gives its input
    higher_is_better: bool = True
    scalar: bool = True  # False when compute() returns a non-scalar (no confidence interval then)
    _updates: torch.Tensor  # number of update() calls since the last reset() (a "sum" state)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # every update() is counted, so compute() can say "no data" for any metric, built-in or not
        if "update" in vars(cls):
            cls.update = _wrap_update(vars(cls)["update"])  # type: ignore[method-assign]
        if "compute" in vars(cls):
            cls.compute = _wrap_compute(vars(cls)["compute"])  # type: ignore[method-assign]

    def __init__(self, name: str | None = None) -> None:
        """`name`: the result key; defaults to the class attribute `name`."""
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"name must be a non-empty string, got {name!r}")
            self.name = name
        if self.input not in INPUTS:
            raise ValueError(f"{type(self).__name__}.input must be one of {INPUTS}, got {self.input!r}")
        self._defaults: dict[str, State] = {}
        self._reductions: dict[str, str] = {}
        self.add_state("_updates", 0, reduce="sum")

    # ---- state -----------------------------------------------------------------------------------
    def add_state(self, name: str, default: State | int | float, reduce: Reduce = "sum") -> None:
        """Registers a piece of state, set now to a copy of `default` and again by every `reset()`.

        Args:
            name: attribute name of the state.
            default: a tensor, a python int (-> int64 tensor) or float (-> float64 tensor), or a
                list (only with ``reduce="cat"``).
            reduce: how two states combine (in `merge()` and `sync()`): ``"sum"`` adds (tensors of
                different shapes are zero-padded first, so counts may grow with the classes seen),
                ``"cat"`` concatenates (lists or tensors along dim 0), ``"max"`` / ``"min"``
                take the elementwise extreme.
        """
        if "_reductions" not in self.__dict__:  # a subclass that forgot super().__init__()
            Metric.__init__(self)
        if reduce not in REDUCTIONS:
            raise ValueError(f"add_state({name!r}): reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if isinstance(default, bool) or not isinstance(default, (int, float, list, torch.Tensor)):
            raise TypeError(
                f"add_state({name!r}): default must be a tensor, int, float or list, got {default!r}"
            )
        if isinstance(default, list) and reduce != "cat":
            raise ValueError(f"add_state({name!r}): a list state must use reduce='cat', got {reduce!r}")
        if isinstance(default, (int, float)):
            default = torch.tensor(
                default, dtype=torch.float64 if isinstance(default, float) else torch.int64
            )
        self._defaults[name] = (
            default.detach().clone() if isinstance(default, torch.Tensor) else list(default)
        )
        self._reductions[name] = reduce
        setattr(self, name, self._fresh(name))

    def _fresh(self, name: str) -> State:
        default = self._defaults[name]
        return default.clone() if isinstance(default, torch.Tensor) else list(default)

    @property
    def states(self) -> dict[str, State]:
        """The current state, by name (the update counter `_updates` included)."""
        return {name: getattr(self, name) for name in self._reductions}

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Adds one batch to the state."""
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def compute(self) -> Any:
        """The value from the state seen so far (a float for scalar metrics)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def reset(self) -> None:
        """Empties the state (back to the defaults given to `add_state`)."""
        for name in self._reductions:
            setattr(self, name, self._fresh(name))

    def clone(self) -> Metric:
        """A fresh copy: same settings, empty state (the big state is not copied)."""
        memo: dict[int, Any] = {id(getattr(self, n)): self._fresh(n) for n in self._reductions}
        return copy.deepcopy(self, memo)

    def merge(self, other: Metric) -> Metric:
        """Adds the state of `other` (same class) into this one, as if this metric had seen its data.

        Example:
            >>> from finetune_lib.metrics import Accuracy
            >>> a, b = Accuracy(), Accuracy()
            >>> a.update([1, 0], [1, 1]); b.update([1], [1])
            >>> a.merge(b).compute()
            0.6666666666666666
        """
        if type(other) is not type(self):
            raise TypeError(
                f"cannot merge {type(other).__name__} into {type(self).__name__}: same class only"
            )
        for name, reduce in self._reductions.items():
            setattr(self, name, combine(getattr(self, name), getattr(other, name), reduce))
        return self

    def sync(self) -> None:
        """Replaces the local state by the state over all processes (no-op unless torch.distributed
        is initialized with more than one process).

        "sum"/"max"/"min" states are all-reduced (after padding to the largest shape), "cat" states
        are all-gathered in rank order. Every process must call it, once, before `compute()`.
        """
        if not is_distributed():
            return
        for name, reduce in self._reductions.items():  # same order on every process
            setattr(self, name, sync_state(getattr(self, name), reduce))

    # ---- per-example statistics, for bootstrap confidence intervals ------------------------------
    def example_stats(self, *inputs: Any) -> torch.Tensor | list:
        """Compact per-example statistics for one batch: one row (or list item) per example.

        Only called when confidence intervals are requested. The default keeps ``[pred, target]``
        int rows for "classes" metrics and ``(hypothesis, references)`` pairs for "text" metrics.
        """
        if self.input == "classes":
            preds, target = (torch.as_tensor(x) for x in inputs)
            if preds.dim() == target.dim() + 1:
                preds = preds.argmax(-1)
            return torch.stack([preds.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()], 1)
        if self.input in ("text", "tags"):
            hypotheses, references = inputs
            return list(zip(hypotheses, references))
        raise self._no_stats()

    def compute_from_stats(self, stats: torch.Tensor | list) -> float:
        """The value over the examples whose `example_stats()` rows are given (e.g. a resample)."""
        scratch = copy.copy(self)  # shares the settings, gets its own fresh state below
        scratch.reset()
        if self.input == "classes":
            scratch.update(stats[:, 0], stats[:, 1])  # type: ignore[call-overload]
        elif self.input in ("text", "tags"):
            scratch.update([h for h, _ in stats], [r for _, r in stats])
        else:
            raise self._no_stats()
        return scratch.compute()

    def _no_stats(self) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} consumes logits, so it has no default per-example statistics: to get "
            "confidence intervals, override example_stats(logits, target) -> Tensor [B, K] and "
            "compute_from_stats(stats) -> float (see Perplexity), or run without confidence."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
