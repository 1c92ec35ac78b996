"""Checkpoints: exact resume on CPU (dropout and shuffling on), atomic writes, safe loading."""

import pickle

import pytest
import torch

from finetune_lib import Callback, FineTuner
from finetune_lib.training import checkpoint as ckpt

from .helpers import classification_records, generation_records, model_and_tokenizer


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_optimizer_step(self, state):
        if state.step == self.step:
            state.should_stop = True


def make(arch, task, out, callbacks=(), **kw):
    extra = {"num_labels": 2} if task == "classification" else {}
    model, tok = model_and_tokenizer(arch, task, dropout=0.1, **extra)
    settings = dict(epochs=3, batch_size=8, gradient_accumulation=2, learning_rate=2e-3, log_every=1,
                    warmup_steps=2, progress=False)
    settings.update(kw)
    return FineTuner(model, task, tokenizer=tok, output_dir=out, callbacks=list(callbacks), **settings)


@pytest.mark.parametrize("arch,task,stop", [
    ("bert", "classification", 5),    # mid-epoch (6 steps per epoch)
    ("bert", "classification", 6),    # at an epoch boundary
    ("gpt2", "causal_lm", 4),         # mid-epoch, token-normalized loss
])
def test_resume_is_bit_for_bit(tmp_path, arch, task, stop):
    data = classification_records(48) if task == "classification" else generation_records(40)
    full = make(arch, task, tmp_path / "full")
    full.fit(data)

    first = make(arch, task, tmp_path / "cut", callbacks=[StopAt(stop)])
    first.fit(data)
    assert first.state.step == stop
    second = make(arch, task, tmp_path / "cut")
    second.fit(data, resume=True)

    losses = lambda h: [(r["step"], r["train/loss"]) for r in h if "train/loss" in r]  # noqa: E731
    assert losses(second.history) == losses(full.history)
    for (n, a), (_, b) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), n
    log_lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert len(log_lines) == len(second.history)


def test_keeps_last_k_and_cleans_stale(tmp_path):
    stale = tmp_path / "run" / "checkpoints" / ".tmp-checkpoint-00000003-999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    tuner = make("bert", "classification", tmp_path / "run", save_every=2, keep_checkpoints=2, overwrite=True)
    tuner.fit(classification_records(48))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["checkpoint-00000016", "checkpoint-00000018"]


def test_half_written_checkpoint_is_not_taken(tmp_path, monkeypatch):
    tuner = make("bert", "classification", tmp_path / "run", save_every=3, epochs=1)
    calls = {"n": 0}
    real = ckpt.save_model

    def failing(model, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(model, path)

    monkeypatch.setattr(ckpt, "save_model", failing)
    with pytest.raises(OSError, match="No space"):
        tuner.fit(classification_records(48))
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["checkpoint-00000003"]  # no temporary folder left
    resumed = make("bert", "classification", tmp_path / "run", epochs=1, save_every=3)
    resumed.fit(classification_records(48), resume=True)
    assert resumed.state.step == 6


def test_malicious_pickle_is_never_executed(tmp_path):
    tuner = make("bert", "classification", tmp_path / "run", max_steps=2)
    tuner.fit(classification_records(32))
    path = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]

    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))

    with open(path / "trainer_state.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    again = make("bert", "classification", tmp_path / "run", max_steps=4)
    with pytest.raises(RuntimeError, match="refused for safety|damaged"):
        again.fit(classification_records(32), resume=True)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_weights_file_named_in_error(tmp_path):
    tuner = make("bert", "classification", tmp_path / "run", max_steps=2)
    tuner.fit(classification_records(32))
    path = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    again = make("bert", "classification", tmp_path / "run", max_steps=4)
    with pytest.raises(RuntimeError, match="model.safetensors"):
        again.fit(classification_records(32), resume=True)


def test_resume_with_changed_settings_is_refused(tmp_path):
    make("bert", "classification", tmp_path / "run", max_steps=2).fit(classification_records(32))
    changed = make("bert", "classification", tmp_path / "run", max_steps=4, batch_size=4, gradient_accumulation=1)
    with pytest.raises(ValueError, match="batch_size"):
        changed.fit(classification_records(32), resume=True)
    changed.fit(classification_records(32), resume=True, allow_config_change=True)
    assert changed.state.step == 4


def test_two_runs_with_the_same_seed_give_identical_weights(tmp_path):
    data = classification_records(48)
    a = make("bert", "classification", tmp_path / "a")
    b = make("bert", "classification", tmp_path / "b")
    a.fit(data)
    b.fit(data)
    for (n, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), n
    c = make("bert", "classification", tmp_path / "c", seed=1)
    c.fit(data)
    assert not all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), c.model.state_dict().values()))
