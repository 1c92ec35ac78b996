"""The training report: metrics with intervals, validation table, data, freezing, figures; Markdown and HTML."""

import re

import pytest

from finetune_lib.reporting import write_report
from finetune_lib.reporting.sections import fmt, split_results, validation_table


def test_split_results_pairs_intervals_and_slices():
    overall, slices = split_results({"loss": 0.5, "accuracy": 0.8, "accuracy_low": 0.7, "accuracy_high": 0.9,
                                     "en/count": 3, "en/accuracy": 1.0, "en/accuracy_low": 1.0,
                                     "en/accuracy_high": 1.0})
    assert overall == {"loss": (0.5, None, None), "accuracy": (0.8, 0.7, 0.9)}
    assert slices == {"en": {"count": 3, "accuracy": (1.0, 1.0, 1.0)}}


def test_validation_table_has_one_row_per_evaluation():
    history = [{"step": 2, "epoch": 1.0, "train/loss": 0.9}, {"step": 2, "epoch": 1.0, "validation/loss": 0.8,
               "validation/f1": 0.5}, {"step": 4, "epoch": 2.0, "train/loss": 0.7},
               {"step": 4, "epoch": 2.0, "validation/loss": 0.6, "validation/f1": 0.75}]
    header, rows = validation_table(history)
    assert header == ["step", "epoch", "train loss", "validation loss", "f1"]
    assert rows == [["2", "1", "0.9000", "0.8000", "0.5000"], ["4", "2", "0.7000", "0.6000", "0.7500"]]


def test_markdown_report_holds_metrics_intervals_and_sections(tmp_path, fitted):
    pytest.importorskip("matplotlib")
    from finetune_lib.reporting import plot_confusion_matrix, plot_history

    tuner, results, data_report = fitted
    curves = plot_history(tuner.history, tmp_path / "curves.png") and tmp_path / "curves.png"
    matrix = tuner.metrics.last_artifacts["confusion_matrix"]
    plot_confusion_matrix(matrix, tuner.preprocessor.label_names, tmp_path / "confusion_matrix.png")
    path = write_report(tuner, results, tmp_path / "report.md", data_report=data_report, confidence=0.95,
                        figures={"Loss and metrics": curves, "Confusion matrix": tmp_path / "confusion_matrix.png"})
    text = path.read_text()
    assert "| metric | value | 95% interval (low – high) |" in text
    for name in ("accuracy", "f1"):
        row = f"| {name} | {fmt(results[name])} | {fmt(results[name + '_low'])} – {fmt(results[name + '_high'])} |"
        assert row in text
    assert "| slice | count | accuracy | f1 |" in text and "| mail |" in text
    for heading in ("## Validation during training", "## Data", "## Layer freezing", "## Settings",
                    "## Environment", "## Figures"):
        assert heading in text
    evals = [r for r in tuner.history if "validation/loss" in r]
    assert len(re.findall(r"^\| \d+( \(saved weights\))? \| [\d.]+ \| ", text, flags=re.M)) == len(evals)
    assert "![Loss and metrics](curves.png)" in text and "![Confusion matrix](confusion_matrix.png)" in text
    assert "LayerFreezer(train_last=2)" in text and "| block 3 |" in text
    assert "negative:" in text and "positive:" in text  # label balance from the DataReport
    assert "| learning_rate | 0.001 |" in text


def test_html_report_stands_alone(tmp_path, fitted):
    pytest.importorskip("matplotlib")
    from finetune_lib.reporting import plot_history

    tuner, results, _ = fitted
    plot_history(tuner.history, tmp_path / "curves.png")
    path = write_report(tuner, results, tmp_path / "out" / "report.html", figures=[tmp_path / "curves.png"])
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert 'src="data:image/png;base64,' in html
    assert f"{fmt(results['accuracy_low'])} – {fmt(results['accuracy_high'])}" in html


def test_report_without_results_or_figures(tmp_path, fitted):
    tuner, _, _ = fitted
    text = write_report(tuner, None, tmp_path / "r.md").read_text()
    assert "## Results" not in text and "## Figures" not in text
    summary, tuner.data_summary = tuner.data_summary, None  # without the summary fit() keeps...
    try:
        text = write_report(tuner, None, tmp_path / "r2.md").read_text()
    finally:
        tuner.data_summary = summary
    assert "| split | examples | truncated to max_length |" in text  # ...the Preprocessor's counts


def test_training_summary_says_what_early_stopping_did():
    from finetune_lib.reporting import RunInfo
    from finetune_lib.reporting.sections import training_summary

    run = RunInfo(task="classification", base_model="m", steps=8, epochs=2.0, weights_step=6, stopped_early_at=8,
                  early_stopping_monitor="validation/f1")
    text = training_summary(run)
    assert text.startswith("8 optimizer steps (2 epochs)")
    assert "early stopping ended training at step 8" in text
    assert "the saved weights are those of step 6 (best `validation/f1`)" in text
    run.stopped_early_at = None
    assert "early stopping did not end training" in training_summary(run)
    assert training_summary(RunInfo(task="classification", base_model="m")) == "not trained in this session"


def test_report_of_an_early_stopped_run_tells_the_truth_without_local_paths(tmp_path, stopped):
    pytest.importorskip("matplotlib")
    from finetune_lib.reporting import plot_history

    figure_dir = tmp_path / "figures"  # outside the report's folder: linked with "..", not by absolute path
    plot_history(stopped, figure_dir / "curves.png")
    path = write_report(stopped, None, tmp_path / "out" / "report.md", figures=[figure_dir / "curves.png"])
    text = path.read_text()
    assert "![curves](../figures/curves.png)" in text
    assert "run folder: `es`" in text and str(tmp_path) not in text and str(stopped.output_dir) not in text
    assert "base model: `tiny-bert`" in text
    assert "early stopping ended training at step 8" in text and "| 4 (saved weights) |" in text
    assert "| weight_decay | 0.01 |" in text
    assert "weight decay 0.01 (not on biases and normalization weights)" in text
