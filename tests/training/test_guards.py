"""Faults during training: NaN/inf losses, out-of-memory, and stop signals."""

import os
import signal

import pytest
import torch

from finetune_lib import Callback, FineTuner
from finetune_lib.training.guards import NonFiniteLossError, OutOfMemoryError

from .helpers import classification_records, model_and_tokenizer


def make(out=None, callbacks=(), dropout=0.1, **kw):
    model, tok = model_and_tokenizer("bert", "classification", dropout=dropout, num_labels=2)
    settings = dict(epochs=2, batch_size=8, learning_rate=2e-3, log_every=1, progress=False)
    settings.update(kw)
    return FineTuner(model, "classification", tokenizer=tok, output_dir=out, callbacks=list(callbacks), **settings)


class PoisonAt(Callback):
    """Makes the loss NaN at optimizer step `step` (1-based), and snapshots what was there before."""

    def __init__(self, step, times=1):
        self.step, self.before, self.times = step, None, times

    def on_batch_start(self, state):
        if state.step + 1 == self.step and self.before is None:
            self.before = ({k: v.clone() for k, v in state.model.state_dict().items()},
                           {k: {n: t.clone() for n, t in s.items()} for k, s in state.optimizer.state_dict()["state"].items()})

    def on_loss_computed(self, state):
        if state.step + 1 == self.step and self.times > 0:
            self.times -= 1
            state.loss = state.loss * float("nan")


def test_nan_loss_stops_before_the_weights_change(tmp_path):
    poison = PoisonAt(3)
    tuner = make(tmp_path / "run", callbacks=[poison], save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*examples \[.*checkpoint-00000002.*on_nonfinite='skip'"):
        tuner.fit(classification_records(48))
    weights, opt_state = poison.before
    for k, v in tuner.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    after = tuner.optimizer.state_dict()["state"]
    assert after.keys() == opt_state.keys()
    for k in after:
        for n in after[k]:
            assert torch.equal(after[k][n], opt_state[k][n])
    # the last good checkpoint is intact and resumable
    resumed = make(tmp_path / "run", save_every=2)
    resumed.fit(classification_records(48), resume=True)
    assert resumed.state.step == 12


def test_nan_loss_can_be_skipped():
    tuner = make(callbacks=[PoisonAt(3)], on_nonfinite="skip")
    history = tuner.fit(classification_records(48))
    assert history[-1]["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in tuner.model.parameters())


def test_endless_nan_with_skip_stops_with_a_clear_error():
    tuner = make(callbacks=[PoisonAt(3, times=10**6)], on_nonfinite="skip")
    with pytest.raises(NonFiniteLossError, match="20 steps in a row"):
        tuner.fit(classification_records(48))


class FakeOOM(Callback):
    def __init__(self, limit):
        self.limit, self.raised = limit, 0

    def on_batch_start(self, state):
        if state.batch["input_ids"].shape[0] > self.limit:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_halves_micro_batches_with_the_same_result(caplog):
    data = classification_records(48)
    plain = make(dropout=0.0, max_steps=4, group_by_length=False, precision="fp32")
    oom = FakeOOM(limit=2)
    split = make(callbacks=[oom], dropout=0.0, max_steps=4, group_by_length=False, precision="fp32")
    plain.fit(data)
    with caplog.at_level("WARNING", logger="finetune_lib"):
        split.fit(data)
    assert oom.raised == 2 and "split in two" in caplog.text
    for (n, a), (_, b) in zip(plain.model.state_dict().items(), split.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def test_out_of_memory_with_one_example_says_what_to_change():
    tuner = make(callbacks=[FakeOOM(limit=0)], max_steps=1)
    with pytest.raises(OutOfMemoryError, match="max_length.*gradient checkpointing"):
        tuner.fit(classification_records(16))


class SignalAt(Callback):
    def __init__(self, step, sig):
        self.step, self.sig = step, sig

    def on_optimizer_step(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig,exc", [(signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)])
def test_signal_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, sig, exc):
    data = classification_records(48)
    full = make(tmp_path / "full")
    full.fit(data)
    cut = make(tmp_path / "cut", callbacks=[SignalAt(4, sig)])
    with pytest.raises(exc):
        cut.fit(data)
    assert cut.state.step == 4
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-00000004").is_dir()
    assert signal.getsignal(sig) is not None and signal.getsignal(sig) != cut  # handlers restored
    again = make(tmp_path / "cut")
    again.fit(data, resume=True)
    for (n, a), (_, b) in zip(full.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n
