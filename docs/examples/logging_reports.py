"""Loggers, figures, the training report and the model card (run by tests/docs with a tiny model)."""
# ruff: noqa: E402  (the code shown on the page imports at the start of its section)

from _setup import model_path, tiny

from finetune_lib import DatasetBuilder
from finetune_lib.demo.data import generate

splits = (DatasetBuilder.from_records(generate(n=200 if tiny() else 1200, seed=0)).deduplicate()
          .split(validation=0.15, test=0.15, stratify=True, seed=0).remove_leakage())
MODEL = model_path()
EPOCHS = 2 if tiny() else 3

# --8<-- [start:train]
from finetune_lib import FineTuner, LayerFreezer, MetricSuite
from finetune_lib.metrics import F1, Accuracy, ConfusionMatrix

tuner = FineTuner(
    MODEL, task="classification", freezer=LayerFreezer(train_last=2),
    metrics=MetricSuite([Accuracy(), F1(average="macro"), ConfusionMatrix()]),
    loggers=["jsonl", "csv", "tensorboard"],   # runs/logging/log.jsonl, log.csv, tensorboard/
    epochs=EPOCHS, batch_size=16, learning_rate=2e-4, log_every=5, output_dir="runs/logging", overwrite=True,
)
tuner.fit(splits.train, splits.validation)
print(tuner.history[-1])   # {'step': ..., 'epoch': ..., 'validation/loss': ..., 'validation/f1': ...}
# --8<-- [end:train]

# --8<-- [start:report]
from finetune_lib.reporting import plot_confusion_matrix, plot_history, write_model_card, write_report

results = tuner.evaluate(splits.test, confidence=0.95)        # f1, f1_low, f1_high, ...
matrix = tuner.metrics.last_artifacts["confusion_matrix"]     # of the split just evaluated
plot_history(tuner, "runs/logging/curves.png")                 # the step of the saved weights marked
plot_confusion_matrix(matrix, tuner.preprocessor.label_names, "runs/logging/confusion_matrix.png")
figures = {"Loss and metrics": "runs/logging/curves.png", "Confusion matrix": "runs/logging/confusion_matrix.png"}
write_report(tuner, results, "runs/logging/report.md", figures=figures, confidence=0.95,
             data_report=splits.report())
write_report(tuner, results, "runs/logging/report.html", figures=figures, confidence=0.95)  # one file

final = tuner.save("runs/logging/final")   # the model, and final/README.md (the model card)
write_model_card(tuner, final, results, confidence=0.95, data_report=splits.report())  # with the intervals
# --8<-- [end:report]

from pathlib import Path

run = Path("runs/logging")
for name in ("log.jsonl", "log.csv", "curves.png", "confusion_matrix.png", "report.md", "report.html",
             "final/README.md"):
    assert (run / name).is_file(), name
assert any((run / "tensorboard").glob("events.out.tfevents.*"))
assert "f1" in (run / "final" / "README.md").read_text()
