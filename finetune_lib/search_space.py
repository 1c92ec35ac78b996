"""The search space of `hyperparameter_search`, and the check of `build` against it.

A space maps each parameter of your `build` function to what the search may try:

=====================================  ==============================================================
``(1e-5, 1e-3, "log")``                 a float on a log scale (low > 0)
``(0.0, 0.3)``                          a float, uniform in [low, high]
``(1, 4)``                              an int in [low, high] (both ends ints); ``(1, 64, "log")`` too
``[1, 2, 4]`` or ``["a", "b"]``        one of these values (None, bool, int, float or str)
``16``                                  a fixed value, passed to every trial (and kept in its params)
=====================================  ==============================================================

Everything is checked before any trial runs, with a message that says what to write instead.

Example:
    >>> specs = check_space({"learning_rate": (1e-5, 1e-3, "log"), "train_last": [1, 2, 4]})
    >>> sorted(specs)
    ['learning_rate', 'train_last']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Param", "check_build", "check_space"]

_SCALARS = (type(None), bool, int, float, str)
_FORMS = ('(low, high) for a float or an int range, (low, high, "log") for a log scale, [a, b, c] for a '
          'choice, or a single number or string for a fixed value')


@dataclass(frozen=True)
class Param:
    """One parameter of the space.

    Attributes:
        kind: "float", "int" or "choice" (a fixed value is a choice of one).
        low: the lower end of a range (inclusive).
        high: the upper end of a range (inclusive).
        log: sample the range on a log scale.
        choices: the values of a choice.
    """

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, name: str) -> Any:
        """The value an optuna `trial` picks for `name`."""
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        """E.g. "float in [1e-05, 0.001], log scale" or "one of [1, 2, 4]"."""
        if self.kind == "choice":
            return f"fixed {self.choices[0]!r}" if len(self.choices) == 1 else f"one of {list(self.choices)!r}"
        return f"{self.kind} in [{self.low:g}, {self.high:g}]" + (", log scale" if self.log else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range(name: str, spec: tuple[Any, ...]) -> Param:
    if len(spec) not in (2, 3) or not all(_is_number(v) for v in spec[:2]):
        raise ValueError(f"space[{name!r}] = {spec!r}: a range is (low, high) or (low, high, \"log\") with "
                         f"numbers for low and high, e.g. (1e-5, 1e-3, \"log\").")
    low, high = spec[0], spec[1]
    scale = spec[2] if len(spec) == 3 else "linear"
    if scale not in ("log", "linear"):
        raise ValueError(f"space[{name!r}] = {spec!r}: the third item is the scale, \"log\" or \"linear\"; "
                         f"got {scale!r}.")
    if not low < high:
        raise ValueError(f"space[{name!r}] = {spec!r}: low must be below high. For a fixed value write it "
                         f"alone, e.g. {name!r}: {low!r}.")
    if scale == "log" and low <= 0:
        raise ValueError(f"space[{name!r}] = {spec!r}: a log scale needs low > 0, e.g. (1e-5, {high!r}, \"log\").")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return Param(kind, float(low), float(high), log=scale == "log")


def _choice(name: str, values: list[Any]) -> Param:
    if not values:
        raise ValueError(f"space[{name!r}] is an empty list: give at least one value to choose from.")
    bad = [v for v in values if not isinstance(v, _SCALARS)]
    if bad:
        raise ValueError(f"space[{name!r}]: choices must be None, bool, int, float or str (optuna stores them), "
                         f"got {bad[0]!r}. Choose by name instead and build the object inside `build`, e.g. "
                         f"{{'optimizer': ['adamw', 'sgd']}}.")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"space[{name!r}] = {values!r} repeats a value: list each choice once.")
    return Param("choice", choices=tuple(values))


def check_space(space: Mapping[str, Any]) -> dict[str, Param]:
    """Check a search space and return its parameters by name.

    Args:
        space: parameter name -> range tuple, list of choices or fixed value (see the module docs).

    Raises:
        ValueError: an empty space, a name that is not a string, or a value in none of the forms.

    Example:
        >>> check_space({"dropout": (0.0, 0.3)})["dropout"].describe()
        'float in [0, 0.3]'
    """
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"space must be a non-empty dict of parameter name -> {_FORMS}; got {space!r}.")
    specs: dict[str, Param] = {}
    for name, spec in space.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"space keys are the names of `build`'s parameters; {name!r} is not a valid name.")
        if isinstance(spec, tuple):
            specs[name] = _range(name, spec)
        elif isinstance(spec, list):
            specs[name] = _choice(name, spec)
        elif isinstance(spec, _SCALARS):
            specs[name] = Param("choice", choices=(spec,))
        else:
            raise ValueError(f"space[{name!r}] = {spec!r} is not understood: write {_FORMS}.")
    return specs


def check_build(build: Callable[..., Any], names: list[str], output_dir: bool) -> bool:
    """Check that `build` takes every name of the space as a keyword, and needs nothing else.

    Args:
        build: the user's function returning a `FineTuner`.
        names: the parameter names of the space.
        output_dir: whether the search has an `output_dir` to give each trial a folder of.

    Returns:
        Whether `build` takes an `output_dir` parameter (by that name), which then gets the trial's folder.

    Raises:
        TypeError: `build` is not callable.
        ValueError: a space key `build` does not take, or a parameter of `build` the space does not give.

    Example:
        >>> check_build(lambda learning_rate, output_dir=None: ..., ["learning_rate"], True)
        True
    """
    if not callable(build):
        raise TypeError(f"build must be a function taking the space's parameters and returning a FineTuner; "
                        f"got {build!r}.")
    try:
        signature = inspect.signature(build)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return False
    params = signature.parameters
    if "output_dir" in names:
        raise ValueError("'output_dir' cannot be searched: the search gives each trial its own folder "
                         "(<output_dir>/trial-<n>) when `build` takes an output_dir parameter. Remove it from the space.")
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    refused = [n for n in names if not (n in params and params[n].kind in by_keyword)
               and not (takes_any and n not in params)]
    if refused:
        takes = [n for n, p in params.items() if p.kind in by_keyword]
        raise ValueError(f"build does not take {', '.join(map(repr, refused))} (it takes "
                         f"{', '.join(map(repr, takes)) or 'no keyword arguments'}). Add the parameter to build, "
                         f"e.g. `def build({refused[0]}, ...)`, or remove it from the space.")
    takes_output_dir = "output_dir" in params and params["output_dir"].kind in by_keyword
    given = set(names) | ({"output_dir"} if takes_output_dir and output_dir else set())
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in given
               and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    if missing:
        raise ValueError(f"build needs {', '.join(map(repr, missing))}, which the space does not give: add it "
                         f"to the space (a fixed value is fine, e.g. {{{missing[0]!r}: ...}}) or give it a default.")
    return takes_output_dir
