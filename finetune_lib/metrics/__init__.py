"""Streaming evaluation metrics and the `MetricSuite` that runs them.

Example:
    >>> from finetune_lib.metrics import Accuracy, F1, MetricSuite
    >>> acc = Accuracy()
    >>> acc.update([1, 0, 1], [1, 1, 1])
    >>> round(acc.compute(), 4)
    0.6667
    >>> suite = MetricSuite([Accuracy(), F1(average="macro")])
"""

from .base import Metric, NoDataError
from .batch import EvalBatch
from .classification import AVERAGES, F1, Accuracy, ConfusionMatrix, Precision, Recall
from .generation import BLEU, ChrF, ExactMatch, RougeL
from .language import Perplexity, TokenAccuracy
from .suite import TASKS, MetricSuite

__all__ = [
    "AVERAGES",
    "BLEU",
    "F1",
    "TASKS",
    "Accuracy",
    "ChrF",
    "ConfusionMatrix",
    "EvalBatch",
    "ExactMatch",
    "Metric",
    "MetricSuite",
    "NoDataError",
    "Perplexity",
    "Precision",
    "Recall",
    "RougeL",
    "TokenAccuracy",
]
