"""finetune_lib: fine-tune pretrained language models on your own domain data.

Six composable classes::

    from finetune_lib import DatasetBuilder, Preprocessor, LayerFreezer, FineTuner, MetricSuite
    from finetune_lib.regularizers import WeightDecay, Dropout, EarlyStopping

Names are imported on first use, so `import finetune_lib` stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DatasetBuilder": "finetune_lib.data.builder",
    "Splits": "finetune_lib.data.builder",
    "Records": "finetune_lib.data.records",
    "Preprocessor": "finetune_lib.data.preprocessor",
    "LayerFreezer": "finetune_lib.freezing",
    "Regularizer": "finetune_lib.regularizers.base",
    "FineTuner": "finetune_lib.training.finetuner",
    "TrainingArgs": "finetune_lib.training.finetuner",
    "Callback": "finetune_lib.events",
    "TrainState": "finetune_lib.events",
    "MetricSuite": "finetune_lib.metrics.suite",
    "Metric": "finetune_lib.metrics.base",
    "hyperparameter_search": "finetune_lib.search",
}

__all__ = [
    "Callback", "DatasetBuilder", "FineTuner", "LayerFreezer", "Metric", "MetricSuite", "Preprocessor",
    "Records", "Regularizer", "Splits", "TrainState", "TrainingArgs", "__version__", "hyperparameter_search",
]

if TYPE_CHECKING:  # pragma: no cover
    from .data.builder import DatasetBuilder, Splits
    from .data.preprocessor import Preprocessor
    from .data.records import Records
    from .events import Callback, TrainState
    from .freezing import LayerFreezer
    from .metrics.base import Metric
    from .metrics.suite import MetricSuite
    from .regularizers.base import Regularizer
    from .search import hyperparameter_search
    from .training.finetuner import FineTuner, TrainingArgs


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'finetune_lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
