"""The facts of a run that the model card and the report print, built from a `FineTuner`.

`run_info_from_tuner` lives in `finetune_lib.reporting.tuner_info` (it reads the tuner by duck typing
and imports nothing of the trainer, so reporting can convert a tuner without importing training);
it is re-exported here, beside the trainer.

Example:
    >>> from finetune_lib.training.summary import run_info_from_tuner
    >>> info = run_info_from_tuner(tuner)                                          # doctest: +SKIP
    >>> info.settings["weight_decay"], info.weights_step                          # doctest: +SKIP
"""

from ..reporting.run_info import RunInfo
from ..reporting.tuner_info import run_info_from_tuner

__all__ = ["RunInfo", "run_info_from_tuner"]
