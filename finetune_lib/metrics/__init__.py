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
from .entities import EntityF1, EntityPrecision, EntityRecall, EntityReport, TagAccuracy
from .generation import BLEU, ChrF, ExactMatch, RougeL
from .language import Perplexity, TokenAccuracy
from .multilabel import HammingLoss, MultiLabelF1, SubsetAccuracy
from .regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrelation, R2Score, SpearmanCorrelation
from .suite import TASKS, MetricSuite

__all__ = [
    "AVERAGES",
    "BLEU",
    "F1",
    "TASKS",
    "Accuracy",
    "ChrF",
    "ConfusionMatrix",
    "EntityF1",
    "EntityPrecision",
    "EntityRecall",
    "EntityReport",
    "EvalBatch",
    "ExactMatch",
    "HammingLoss",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Metric",
    "MetricSuite",
    "MultiLabelF1",
    "NoDataError",
    "PearsonCorrelation",
    "Perplexity",
    "Precision",
    "R2Score",
    "Recall",
    "RougeL",
    "SpearmanCorrelation",
    "SubsetAccuracy",
    "TagAccuracy",
    "TokenAccuracy",
]
