"""The numeric settings of `TrainingArgs`: finite, of the right kind (never a bool), in range.

A NaN or inf learning rate, a negative `max_grad_norm` (it would flip the gradient) or a negative
`keep_checkpoints` (it would delete checkpoints) ruin a run silently; they are refused up front,
with the setting, the value and what to pass instead. NumPy scalars are accepted and turned into
Python numbers.

Example:
    >>> TrainingArgs(learning_rate=float("nan")).validate()  # validate() calls check_numbers
    Traceback (most recent call last):
    ValueError: learning_rate must be a positive finite number, got nan. The peak learning rate, e.g. 5e-5.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What one numeric setting accepts: an integer or a real, its lower (and upper) bound, None."""

    integer: bool
    low: float
    low_ok: bool  # the bound itself is allowed
    fix: str
    high: float | None = None  # exclusive, unless high_ok
    none: bool = False  # None is allowed
    words: tuple[str, ...] = ()  # strings also allowed, e.g. "epoch"
    what: str | None = None  # how to say it, when not the generic way
    high_ok: bool = False  # the upper bound itself is allowed

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.what is not None:
            what = self.what
        elif self.integer and self.low == 1 and self.low_ok and self.high is None:
            what = "a positive integer"
        elif not self.integer and self.low == 0 and not self.low_ok and self.high is None:
            what = "a positive finite number"
        elif self.high is not None:
            what += f" in [{_show(self.low)}, {_show(self.high)})" if self.low_ok else \
                f" in ({_show(self.low)}, {_show(self.high)})"
        else:
            what += f" {'>=' if self.low_ok else '>'} {_show(self.low)}"
        extra = [repr(w) for w in self.words] + (["None"] if self.none else [])
        return what + (f" (or {' or '.join(extra)})" if extra else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none
        if isinstance(value, str):
            return value in self.words
        if isinstance(value, bool) or type(value).__name__ == "bool_":  # True is an int to Python
            return False
        if not isinstance(value, numbers.Integral if self.integer else numbers.Real):
            return False
        if not self.integer and not math.isfinite(float(value)):
            return False
        if value < self.low or (value == self.low and not self.low_ok):
            return False
        return self.high is None or value < self.high or (self.high_ok and value == self.high)


RULES: dict[str, Rule] = {
    "epochs": Rule(False, 0, False, "Passes over the training data, e.g. 3 (fractions allowed), or set max_steps."),
    "max_steps": Rule(True, 1, True, "Optimizer steps to take, e.g. 1000; None trains for `epochs`.", none=True),
    "batch_size": Rule(True, 1, True, "Examples per optimizer step, e.g. 16."),
    "gradient_accumulation": Rule(True, 1, True, "Micro-batches per optimizer step, e.g. 1."),
    "learning_rate": Rule(False, 0, False, "The peak learning rate, e.g. 5e-5."),
    "warmup_ratio": Rule(False, 0, True, "The fraction of the steps spent warming up, e.g. 0.1.", high=1),
    "warmup_steps": Rule(True, 0, True, "Steps of linear warmup, e.g. 100 (0: none)."),
    "max_grad_norm": Rule(False, 0, True, "Clip the gradient norm to this, e.g. 1.0; None or 0 turn clipping off "
                                          "(a negative value would flip the gradient).", none=True),
    "eval_every": Rule(True, 1, True, "Evaluate every N optimizer steps, or 'epoch'.", none=True, words=("epoch",)),
    "save_every": Rule(True, 1, True, "Checkpoint every N optimizer steps, or 'epoch'.", none=True, words=("epoch",)),
    "log_every": Rule(True, 1, True, "Log the training loss every N optimizer steps, e.g. 10."),
    "keep_checkpoints": Rule(True, 1, True, "The newest K checkpoints are kept, e.g. 2; None keeps them all "
                                            "(a negative number would delete checkpoints).", none=True),
    "eval_batch_size": Rule(True, 1, True, "Examples per evaluation batch; None: 2 x batch_size.", none=True),
    "max_new_tokens": Rule(True, 1, True, "Tokens to generate per prompt, e.g. 64."),
    "generation_time_budget": Rule(False, 0, False, "Seconds of generation per evaluation, e.g. 600; None for no "
                                                    "limit.", none=True, what="a positive number of seconds"),
    "seed": Rule(True, 0, True, "Any integer from 0 to 2**32 - 1, e.g. 0.", high=2**32),
    "temperature": Rule(False, 0, False, "It divides the logits before sampling (do_sample=True): 1.0 keeps the "
                                         "model's distribution, lower is more conservative, e.g. 0.7."),
    "top_p": Rule(False, 0, False, "Sampling keeps the smallest set of tokens whose probability reaches top_p: 1.0 "
                                   "keeps them all, e.g. 0.9.", high=1, high_ok=True, what="a number in (0, 1]"),
    "threshold": Rule(False, 0, False, "The probability at or above which a label is predicted (multi-label), e.g. "
                                       "0.5.", high=1, what="a number in (0, 1)"),
    "huber_delta": Rule(False, 0, False, "Where the Huber loss turns linear, e.g. 1.0."),
}
FLAGS = ("group_by_length", "do_sample", "tune_thresholds", "scale_targets")


def check_numbers(args: Any) -> None:
    """Raise a `ValueError` naming the first numeric setting that is not finite, of the wrong kind or
    out of range, and what to pass instead. Settings `args` does not have are skipped."""
    for name, rule in RULES.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if not rule.accepts(value):
            raise ValueError(f"{name} must be {rule.describe()}, got {value!r}. {rule.fix}")
        if isinstance(value, numbers.Real) and type(value) not in (int, float):  # NumPy scalars
            setattr(args, name, int(value) if rule.integer else float(value))  # type: ignore[call-overload]
    for name in FLAGS:
        if hasattr(args, name) and not isinstance(getattr(args, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(args, name)!r}.")


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**40 else repr(x)
