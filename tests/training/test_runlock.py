"""One run at a time per output_dir: an OS lock held by fit, refused with the holder's name."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from finetune_lib import Callback, FineTuner
from finetune_lib.training.runlock import LOCK_FILE, RunLock, RunLockedError, read_holder

from .helpers import classification_records, model_and_tokenizer

pytest.importorskip("fcntl")

HOLD = """
import sys
from finetune_lib.training.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.readline()  # hold until told (or killed)
lock.release()
"""


def tuner(out, **kw):
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    return FineTuner(model, "classification", tokenizer=tok, output_dir=out, max_steps=2, batch_size=8,
                     progress=False, **kw)


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on tmp_path / 'run'."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_run_held_by_another_process_is_refused_naming_it(tmp_path, holder):
    with pytest.raises(RunLockedError, match=rf"in use by another run: process {holder.pid} on host "
                                             rf"{socket.gethostname()}, started 20\d\d-.*another output_dir"):
        tuner(tmp_path / "run").fit(classification_records(16))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]  # nothing written
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)
    tuner(tmp_path / "run").fit(classification_records(16))  # released: the run goes ahead
    assert (tmp_path / "run" / "run.json").exists() and not (tmp_path / "run" / LOCK_FILE).exists()


def test_the_lock_dies_with_its_process(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / "run" / LOCK_FILE).exists()  # the file is left behind, but the OS lock is gone
    with RunLock(tmp_path / "run") as lock:
        assert lock.held and read_holder(tmp_path / "run" / LOCK_FILE)["pid"] == os.getpid()


class SecondFit(Callback):
    """During the first fit, a second FineTuner tries to train into the same folder."""

    def __init__(self, out):
        self.out, self.error = out, None

    def on_fit_start(self, state):
        try:
            tuner(self.out, overwrite=True).fit(classification_records(16))
        except RunLockedError as e:
            self.error = e


def test_two_finetuners_in_one_process(tmp_path):
    second = SecondFit(tmp_path / "run")
    tuner(tmp_path / "run", callbacks=[second]).fit(classification_records(16))
    assert second.error is not None and f"process {os.getpid()}" in str(second.error)
    assert "this very process" in str(second.error)
    tuner(tmp_path / "run", overwrite=True).fit(classification_records(16))  # the first released it on return


def test_the_lock_is_released_when_fit_raises(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        tuner(tmp_path / "run").fit(classification_records(16), resume=True)
    assert not (tmp_path / "run").exists()  # the folder the lock made is gone again
    with pytest.raises(ValueError, match="no \\['label'\\]"):
        tuner(tmp_path / "run").fit([{"text": "a"}])
    tuner(tmp_path / "run").fit(classification_records(16))
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_runlock_itself(tmp_path):
    folder = tmp_path / "a" / "b"
    first = RunLock(folder).acquire()
    with pytest.raises(RunLockedError, match="this very process"):
        RunLock(folder).acquire()
    first.release()
    assert not (tmp_path / "a").exists()  # it created both folders and left them empty
    assert not RunLock(None).acquire().held and not RunLock(folder, enabled=False).acquire().held
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        RunLock(tmp_path / "file").acquire()
