"""Regularizers: training callbacks that change the loss, the model or the settings.

Each built-in is one small file; `Regularizer` (base.py) is the base class to write your own.

Example:
    >>> from finetune_lib.regularizers import WeightDecay, Dropout, EarlyStopping
    >>> regularizers = [WeightDecay(0.01), Dropout(0.1), EarlyStopping(monitor="validation/f1", patience=2)]
"""

from .base import Regularizer, micro_batch_share
from .dropout import Dropout, DropoutReport, set_dropout
from .early_stopping import EarlyStopping, infer_mode
from .l2sp import L2SP, l2sp_penalty
from .label_smoothing import LabelSmoothing
from .overfitting import OverfittingMonitor
from .rdrop import RDrop, symmetric_kl
from .reinit import ReinitTopBlocks, reinit_top_blocks
from .weight_decay import WeightDecay

__all__ = [
    "Dropout",
    "DropoutReport",
    "EarlyStopping",
    "L2SP",
    "LabelSmoothing",
    "OverfittingMonitor",
    "RDrop",
    "Regularizer",
    "ReinitTopBlocks",
    "WeightDecay",
    "infer_mode",
    "l2sp_penalty",
    "micro_batch_share",
    "reinit_top_blocks",
    "set_dropout",
    "symmetric_kl",
]
