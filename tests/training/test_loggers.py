"""Loggers: CSV (growing columns, resume rewrite), TensorBoard event files, LivePlot in and out of Jupyter."""

import csv
import importlib.util
import logging
import sys

import pytest
import torch

from finetune_lib import Callback, FineTuner, TrainState
from finetune_lib.testing import save_tiny_pretrained
from finetune_lib.training import loggers
from finetune_lib.training.args import TrainingArgs
from finetune_lib.training.loggers import CSVLogger, LivePlot, TensorBoardLogger

from .helpers import classification_records, model_and_tokenizer

TRAIN = [{"step": 1, "epoch": 0.25, "train/loss": 0.6931471805599453, "train/lr": 1e-3},
         {"step": 2, "epoch": 0.5, "train/loss": 0.5, "train/lr": 9e-4}]
EVAL = {"step": 2, "epoch": 0.5, "validation/loss": 0.45, "validation/accuracy": 0.75}


def fake_state(record=None, step=0, history=()):
    return TrainState(model=torch.nn.Linear(1, 1), record=record or {}, step=step, history=list(history),
                      args=TrainingArgs())


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# ---- CSVLogger ----------------------------------------------------------------------------------------
def test_csv_columns_grow_and_earlier_rows_are_kept(tmp_path):
    path = tmp_path / "logs" / "log.csv"
    logger = CSVLogger(path)
    for record in [*TRAIN, EVAL, {"step": 3, "epoch": 0.75, "train/loss": 0.4, "train/lr": 8e-4,
                                  "train/skipped_steps": 1}]:
        logger.on_log(fake_state(record))
    header, rows = read_csv(path)
    assert header == ["step", "epoch", "train/loss", "train/lr", "validation/loss", "validation/accuracy",
                      "train/skipped_steps"]
    assert len(rows) == 4
    assert float(rows[0]["train/loss"]) == TRAIN[0]["train/loss"]  # full precision
    assert rows[0]["validation/loss"] == "" and rows[0]["train/skipped_steps"] == ""
    assert rows[2]["train/loss"] == "" and float(rows[2]["validation/accuracy"]) == 0.75
    assert rows[3]["train/skipped_steps"] == "1"
    assert not list(tmp_path.glob("logs/*.tmp"))


def test_csv_appends_without_rewriting_when_keys_are_known(tmp_path, monkeypatch):
    logger = CSVLogger(tmp_path / "log.csv")
    logger.on_log(fake_state(TRAIN[0]))
    rewrites = []
    monkeypatch.setattr(logger, "_write_all", lambda *a: rewrites.append(a))
    logger.on_log(fake_state(TRAIN[1]))
    assert rewrites == []
    assert len(read_csv(tmp_path / "log.csv")[1]) == 2


def test_csv_continues_an_existing_file_with_its_header(tmp_path):
    CSVLogger(tmp_path / "log.csv").on_log(fake_state(TRAIN[0]))
    again = CSVLogger(tmp_path / "log.csv")  # a new object: reads the header from disk
    again.on_log(fake_state(TRAIN[1]))
    header, rows = read_csv(tmp_path / "log.csv")
    assert header == ["step", "epoch", "train/loss", "train/lr"] and [r["step"] for r in rows] == ["1", "2"]


def test_csv_rewrite_replaces_the_file_with_history(tmp_path):
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    for record in [*TRAIN, EVAL]:
        logger.on_log(fake_state(record))
    logger.rewrite(TRAIN[:1])  # rolled back to step 1
    header, rows = read_csv(path)
    assert header == ["step", "epoch", "train/loss", "train/lr"] and len(rows) == 1
    logger.on_log(fake_state(EVAL))
    header, rows = read_csv(path)
    assert [r["step"] for r in rows] == ["1", "2"] and header[-1] == "validation/accuracy"


def test_csv_fit_start_starts_over_from_tuner_history(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,old\n1,x\n")
    logger = CSVLogger(path)
    logger.on_fit_start(fake_state(history=[]))
    assert path.read_text() == ""
    logger.on_fit_start(fake_state(history=TRAIN))
    assert len(read_csv(path)[1]) == 2


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_optimizer_step(self, state):
        if state.step == self.step:
            state.should_stop = True


def test_csv_after_resume_matches_history(tmp_path):
    data = classification_records(48)

    def make(out, callbacks):
        model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
        return FineTuner(model, "classification", tokenizer=tok, output_dir=out, callbacks=callbacks, epochs=2,
                         batch_size=8, log_every=1, save_every=2, progress=False)

    first = make(tmp_path / "run", [StopAt(5), CSVLogger(tmp_path / "run" / "log.csv")])
    first.fit(data[:40], data[40:])
    assert max(int(r["step"]) for r in read_csv(tmp_path / "run" / "log.csv")[1]) == 5  # step 5 not checkpointed
    second = make(tmp_path / "run", [CSVLogger(tmp_path / "run" / "log.csv")])
    second.fit(data[:40], data[40:], resume=True)
    _, rows = read_csv(tmp_path / "run" / "log.csv")
    assert len(rows) == len(second.history)
    assert [int(r["step"]) for r in rows] == [r["step"] for r in second.history]
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses == [r["train/loss"] for r in second.history if "train/loss" in r]


# ---- TensorBoardLogger -------------------------------------------------------------------------------
def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)], acc.Tags()["scalars"]


def test_tensorboard_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.on_fit_start(fake_state())
    for record in [*TRAIN, EVAL]:
        logger.on_log(fake_state(record, step=record["step"]))
    logger.on_fit_end(fake_state())
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    values, tags = _scalars(tmp_path / "tb", "train/loss")
    assert values == [(1, 0.693147), (2, 0.5)]
    assert {"train/lr", "validation/loss", "validation/accuracy"} <= set(tags)
    assert "step" not in tags and "epoch" not in tags


def test_tensorboard_resume_hides_rolled_back_steps(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.on_fit_start(fake_state())
    for step in range(1, 5):
        logger.on_log(fake_state({"step": step, "train/loss": float(step)}, step=step))
    logger.on_fit_end(fake_state())
    resumed = TensorBoardLogger(tmp_path / "tb")
    resumed.on_fit_start(fake_state(step=2))  # the checkpoint was at step 2
    for step in range(3, 5):
        resumed.on_log(fake_state({"step": step, "train/loss": 10.0 * step}, step=step))
    resumed.on_fit_end(fake_state())
    values, _ = _scalars(tmp_path / "tb", "train/loss")
    assert values == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_tensorboard_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"finetune_lib\[tensorboard\]"):
        TensorBoardLogger("unused")


# ---- LivePlot -----------------------------------------------------------------------------------------
def test_liveplot_is_a_noop_outside_jupyter(caplog, monkeypatch):
    monkeypatch.setattr(loggers, "in_notebook", lambda: False)
    plot = LivePlot(every=1)
    with caplog.at_level(logging.INFO, logger="finetune_lib"):
        for _ in range(2):  # two fits: one message
            plot.on_fit_start(fake_state())
            plot.on_log(fake_state(TRAIN[0], history=TRAIN[:1]))
            plot.on_fit_end(fake_state(history=TRAIN[:1]))
    assert plot.draws == 0
    assert sum("LivePlot" in r.getMessage() for r in caplog.records) == 1


def test_liveplot_outside_ipython_detects_no_notebook():
    assert loggers.in_notebook() is False  # pytest is not a Jupyter kernel


def test_liveplot_redraws_every_n_logs_in_jupyter(monkeypatch):
    pytest.importorskip("matplotlib")
    shown, handles = [], []

    class FakeImage:
        def __init__(self, data, format):
            self.data = data

    class Handle:  # IPython's DisplayHandle: update() replaces only this output, not the whole cell's
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    def display(obj, display_id=None):
        assert display_id is True  # a handle, so later drawings replace this one output only
        shown.append(obj)
        handles.append(Handle())
        return handles[-1]

    monkeypatch.setattr(loggers, "in_notebook", lambda: True)
    monkeypatch.setattr(loggers, "_ipython_display", lambda: (display, FakeImage))
    plot = LivePlot(every=2)
    history = []
    plot.on_fit_start(fake_state())
    for record in [*TRAIN, EVAL]:
        history.append(record)
        plot.on_log(fake_state(record, history=history))
    assert plot.draws == 1 and len(shown) == 1  # after the 2nd record
    plot.on_fit_end(fake_state(history=history))  # the 3rd record is drawn at the end, in place
    assert plot.draws == 2 and len(shown) == 1 and len(handles[0].updates) == 1
    assert all(img.data.startswith(b"\x89PNG") for img in [*shown, *handles[0].updates])
    plot.on_fit_start(fake_state())  # a second fit shows its own figure
    plot.on_log(fake_state(TRAIN[0], history=TRAIN[:1]))
    plot.on_log(fake_state(TRAIN[1], history=TRAIN[:2]))
    assert len(shown) == 2


def test_liveplot_rejects_bad_every():
    with pytest.raises(ValueError, match="every"):
        LivePlot(every=0)


# ---- end to end -----------------------------------------------------------------------------------------
def test_csv_logger_through_finetuner_then_save(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "base", arch="bert", task="classification")
    data = classification_records(40)
    tuner = FineTuner(str(folder), "classification", epochs=2, batch_size=8, log_every=2, progress=False,
                      callbacks=[CSVLogger(tmp_path / "run" / "log.csv")])
    tuner.fit(data[:32], data[32:])
    header, rows = read_csv(tmp_path / "run" / "log.csv")
    assert len(rows) == len(tuner.history) and header[:3] == ["step", "epoch", "train/loss"]
    assert "validation/accuracy" in header and sum(bool(r["validation/accuracy"]) for r in rows) == 2
    out = tuner.save(tmp_path / "final")
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "## Validation metrics during training" in card


def test_loggers_write_nothing_on_other_ranks(tmp_path):
    state = fake_state(TRAIN[0], step=1)
    state.is_main_process = False
    csv_logger = CSVLogger(tmp_path / "log.csv")
    csv_logger.on_fit_start(state)
    csv_logger.on_log(state)
    assert not (tmp_path / "log.csv").exists()
    if importlib.util.find_spec("tensorboard") is not None:
        tb = TensorBoardLogger(tmp_path / "tb")
        tb.on_fit_start(state)
        tb.on_log(state)
        tb.on_fit_end(state)
        assert not (tmp_path / "tb").exists()


def test_make_loggers_from_names(tmp_path):
    from finetune_lib.training.loggers import JSONLLogger, make_loggers

    made = make_loggers(["jsonl", "csv", "live", CSVLogger(tmp_path / "mine.csv")], tmp_path)
    assert [type(c).__name__ for c in made] == ["JSONLLogger", "CSVLogger", "LivePlot", "CSVLogger"]
    assert isinstance(made[0], JSONLLogger) and made[0].path == tmp_path / "log.jsonl"
    assert made[1].path == tmp_path / "log.csv"
    assert [type(c).__name__ for c in make_loggers(["jsonl", "csv", "live"], None)] == ["LivePlot"]
    with pytest.raises(ValueError, match="Unknown logger 'neptune'"):
        make_loggers(["neptune"], tmp_path)
