"""The non-finite check without a host read per step (the CUDA path), exercised on a CPU."""

import traceback

import pytest
import torch

from finetune_lib.training.guards import NonFiniteLossError

from .helpers import classification_records
from .test_guards import PoisonAt, make


def device_path(tuner):
    tuner._host_reads_free = False  # what CUDA sets: every host read would synchronize
    tuner._device_guard = True
    return tuner


def test_nan_step_is_skipped_on_the_device_and_stops_at_the_log_step():
    poison = PoisonAt(3)
    tuner = device_path(make(callbacks=[poison]))
    with pytest.raises(NonFiniteLossError, match="1 of the last 1 steps .*skipped on the device"):
        tuner.fit(classification_records(48))
    weights, opt_state = poison.before
    for k, v in tuner.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    after = tuner.optimizer.state_dict()["state"]
    for k in after:
        for n in after[k]:
            assert torch.equal(after[k][n], opt_state[k][n]), (k, n)


def test_skip_counts_the_step_and_keeps_the_weights_finite():
    tuner = device_path(make(callbacks=[PoisonAt(3)], on_nonfinite="skip", log_every=4))
    history = tuner.fit(classification_records(48))
    assert history[-1]["train/skipped_steps"] == 1
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert all(torch.isfinite(torch.tensor(losses)))  # the skipped step is left out of the mean
    assert all(torch.isfinite(p).all() for p in tuner.model.parameters())


def test_same_run_as_the_host_check_when_all_is_finite():
    a = make(dropout=0.0, precision="fp32")
    b = device_path(make(dropout=0.0, precision="fp32"))
    ha, hb = a.fit(classification_records(32)), b.fit(classification_records(32))
    assert [h["train/loss"] for h in ha if "train/loss" in h] == pytest.approx(
        [h["train/loss"] for h in hb if "train/loss" in h], rel=1e-6)


def test_no_host_read_per_step(monkeypatch):
    """The library's host reads do not grow with the number of steps between log steps. (transformers'
    own BERT mask code reads the padding mask every forward, `masking_utils._ignore_bidirectional_mask_sdpa`;
    only reads made from finetune_lib's code are counted.)"""
    counts = []
    for steps in (4, 8):
        reads = []
        for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
            original = getattr(torch.Tensor, name)

            def counted(self, *a, _original=original, _reads=reads, **k):
                caller = traceback.extract_stack(limit=2)[0].filename
                if "finetune_lib" in caller and (self.is_floating_point() or self.dtype == torch.bool):
                    _reads.append(1)
                return _original(self, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)
        tuner = device_path(make(max_steps=steps, log_every=100, dropout=0.0))
        tuner.fit(classification_records(64))
        monkeypatch.undo()
        counts.append(len(reads))
    assert counts[0] == counts[1] > 0  # the reads at the log step and the end are seen
