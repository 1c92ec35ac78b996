"""Reports about a run: loss and metric curves, a confusion matrix, the training report and the
model card written by `FineTuner.save`.

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

__all__ = ["build_report", "plot_confusion_matrix", "plot_history", "write_model_card", "write_report"]
