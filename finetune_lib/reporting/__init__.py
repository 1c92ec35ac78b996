"""Reports about a run: loss and metric curves, a confusion matrix, the training report and the
model card written by `FineTuner.save`.

The card and the report read a `RunInfo` (plain data about the run: settings actually used,
history, labels, ``max_length``, the step the saved weights come from, ...). Pass a `FineTuner` and
it is converted for you (`run_info_from_tuner`, which reads the tuner by duck typing); importing
this package does not import the trainer.

Figures need matplotlib (``pip install 'finetune_lib[plots]'``); it is imported only when a figure
is drawn, so the reports themselves work without it.

Example:
    >>> from finetune_lib.reporting import plot_history, write_report
    >>> plot_history(tuner.history, "runs/a/curves.png")                         # doctest: +SKIP
    >>> write_report(tuner, tuner.evaluate(test, confidence=0.95), "runs/a/report.md",
    ...              figures=["runs/a/curves.png"], confidence=0.95)              # doctest: +SKIP
"""

from .model_card import write_model_card
from .plots import plot_confusion_matrix, plot_history
from .report import build_report, write_report
from .run_info import RunInfo
from .tuner_info import as_run_info, run_info_from_tuner

__all__ = ["RunInfo", "as_run_info", "build_report", "plot_confusion_matrix", "plot_history", "run_info_from_tuner",
           "write_model_card", "write_report"]
