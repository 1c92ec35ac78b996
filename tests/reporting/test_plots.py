"""Figures: non-empty PNG files from a history and a confusion matrix (matplotlib's Agg canvas)."""

import sys

import pytest

from finetune_lib.reporting import plot_confusion_matrix, plot_history
from finetune_lib.reporting.plots import history_series

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"step": 2, "epoch": 0.5, "train/loss": 0.9, "train/lr": 1e-3},
    {"step": 4, "epoch": 1.0, "train/loss": 0.7, "train/lr": 9e-4},
    {"step": 4, "epoch": 1.0, "validation/loss": 0.75, "validation/accuracy": 0.6, "validation/f1": 0.55},
    {"step": 6, "epoch": 1.5, "train/loss": 0.5, "train/lr": 8e-4},
    {"step": 8, "epoch": 2.0, "train/loss": 0.4, "train/lr": 7e-4},
    {"step": 8, "epoch": 2.0, "validation/loss": 0.5, "validation/accuracy": 0.8, "validation/f1": 0.78},
]


def is_png(path):
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 2000


def test_history_series_collects_numeric_keys():
    series = history_series(HISTORY)
    assert series["train/loss"] == ([2, 4, 6, 8], [0.9, 0.7, 0.5, 0.4])
    assert series["validation/f1"] == ([4, 8], [0.55, 0.78])
    assert "step" not in series and "epoch" not in series


def test_plot_history_writes_png_with_two_axes(tmp_path):
    figure = plot_history(HISTORY, tmp_path / "deep" / "curves.png", title="run")
    assert is_png(tmp_path / "deep" / "curves.png")
    loss_ax, metric_ax = figure.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train loss", "validation loss"]
    assert [line.get_label() for line in metric_ax.lines] == ["accuracy", "f1"]


def test_plot_history_without_validation_and_chosen_metrics(tmp_path):
    train_only = [r for r in HISTORY if "train/loss" in r]
    assert len(plot_history(train_only, tmp_path / "a.png").axes) == 1
    figure = plot_history(HISTORY, tmp_path / "b.png", metrics=["f1"])
    assert [line.get_label() for line in figure.axes[1].lines] == ["f1"]
    assert is_png(tmp_path / "a.png") and is_png(tmp_path / "b.png")
    assert len(plot_history([], tmp_path / "empty.png").axes) == 1  # nothing logged yet: still a figure


def test_plot_confusion_matrix_writes_png_and_pads_unseen_classes(tmp_path):
    figure = plot_confusion_matrix([[5, 1], [2, 6]], ["billing", "shipping", "returns"], tmp_path / "cm.png")
    assert is_png(tmp_path / "cm.png")
    ax = figure.axes[0]
    assert ax.images[0].get_array().shape == (3, 3)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["billing", "shipping", "returns"]
    assert "6" in [t.get_text() for t in ax.texts]
    plot_confusion_matrix([[5, 1], [2, 6]], path=tmp_path / "norm.png", normalize=True)
    assert is_png(tmp_path / "norm.png")


def test_plot_confusion_matrix_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix([[1, 2, 3], [4, 5, 6]])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"finetune_lib\[plots\]"):
        plot_history(HISTORY)


def test_flat_metric_curves_get_a_readable_axis():
    from finetune_lib.reporting.plots import _metric_limits

    lo, hi = _metric_limits([0.9835, 0.9835, 0.9835])
    assert hi - lo >= 0.1 - 1e-12 and lo <= 0.9835 <= hi and hi <= 1.0  # not a 1e-4-wide band
    assert _metric_limits([0.2, 0.9]) == pytest.approx((0.165, 0.935))
    lo, hi = _metric_limits([35.0, 36.0])  # perplexity: not a fraction, not clipped to [0, 1]
    assert lo < 35.0 and hi > 36.0 and hi - lo >= 1.0


def test_curves_are_marked_at_the_step_of_the_saved_weights(tmp_path):
    from finetune_lib.reporting import RunInfo

    run = RunInfo(task="classification", base_model="m", history=HISTORY, steps=8, weights_step=4)
    figure = plot_history(run, tmp_path / "marked.png")
    assert is_png(tmp_path / "marked.png")
    for ax in figure.axes:
        marks = [line for line in ax.lines if line.get_label() == "saved weights (step 4)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [4, 4]
    plain = plot_history(HISTORY)  # a bare history: no mark unless asked
    assert not any("saved weights" in line.get_label() for ax in plain.axes for line in ax.lines)
    assert any("saved weights (step 6)" in line.get_label() for line in plot_history(HISTORY, mark_step=6).axes[0].lines)
