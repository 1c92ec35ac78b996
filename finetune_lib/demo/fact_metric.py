"""`FactAccuracy`: a custom text metric, written as a user would write one for their own domain.

A support answer is right when it states the facts it should: the price, the time limit, the
opening hours. Which facts an answer should state is read off its reference: every known fact
string that the reference contains must appear in the generated answer too. The score is the share
of answers that state all of theirs (answers whose reference states no known fact are not counted).

It is a streaming `Metric` with two counters (constant memory, summed across processes), and
`input = "text"`, so `MetricSuite` hands it the generated texts and their references, as it does
BLEU and chrF.

Example:
    >>> m = FactAccuracy(["$18.40", "21 days"])
    >>> m.update(["It costs $18.40.", "Returns within 30 days."], ["Jasmine Pearl is $18.40.", "Within 21 days."])
    >>> m.compute()
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..metrics import Metric
from ..metrics.base import no_data


class FactAccuracy(Metric):
    """Share of generated answers that state every known fact their reference states, in [0, 1].

    Args:
        facts: the fact strings to look for (prices, durations, times), matched case-insensitively.
        name: the result key (default ``"fact_accuracy"``).
    """

    name = "fact_accuracy"
    input = "text"  # MetricSuite passes update(hypotheses: list[str], references: list[str])
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, facts: Sequence[str], name: str | None = None) -> None:
        super().__init__(name)
        if not facts or not all(isinstance(f, str) and f for f in facts):
            raise ValueError("FactAccuracy needs a non-empty list of fact strings, e.g. ['$18.40', '21 days'].")
        self.facts = [f.lower() for f in facts]
        self.add_state("correct", 0)  # reduce="sum": counters merge across processes
        self.add_state("total", 0)

    def update(self, hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        """Count the answers whose reference states a known fact, and those that state all of them."""
        for hypothesis, reference in zip(hypotheses, references, strict=True):
            ref = (reference if isinstance(reference, str) else reference[0]).lower()
            wanted = [f for f in self.facts if f in ref]
            if wanted:
                self.total += 1
                self.correct += int(all(f in hypothesis.lower() for f in wanted))

    def compute(self) -> float:
        """The share of counted answers that state all their facts."""
        if int(self.total) == 0:
            raise no_data(self)
        return float(self.correct) / float(self.total)
