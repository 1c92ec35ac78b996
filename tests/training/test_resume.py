"""Checkpoints: exact resume on CPU (dropout and shuffling on), atomic writes, safe loading."""

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from finetune_lib import FineTuner
from finetune_lib.testing import StopAt, save_tiny_pretrained, tiny_model, tiny_tokenizer
from finetune_lib.training import checkpoint as ckpt

from .helpers import classification_records, generation_records, model_and_tokenizer


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


def _fail_second_call(real, monkeypatch, name):
    """Replace `ckpt.<name>` by a writer that, on its second call, writes half a file and hits a full disk."""
    calls = {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            path = next(Path(a) for a in args if isinstance(a, (str, Path)))
            Path(path).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(ckpt, name, failing)


@pytest.mark.parametrize("writer", ["save_model", "write_trainer_state", "write_info"])
def test_half_written_checkpoint_is_not_taken(tmp_path, monkeypatch, writer):
    """The weights, the optimizer state (torch.save) or the JSON state fail on the second checkpoint."""
    tuner = make("bert", "classification", tmp_path / "run", save_every=3, epochs=1)
    _fail_second_call(getattr(ckpt, writer), monkeypatch, writer)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint-00000006.*No space left.*newest complete "
                                                        r"checkpoint is checkpoint-00000003.*resume=True") as error:
        tuner.fit(classification_records(48))
    assert error.value.errno == 28 and isinstance(error.value, OSError)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["checkpoint-00000003"]  # no temporary folder left
    monkeypatch.undo()
    resumed = make("bert", "classification", tmp_path / "run", epochs=1, save_every=3)
    resumed.fit(classification_records(48), resume=True)
    assert resumed.state.step == 6
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint-00000003", "checkpoint-00000006"]


class Box(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((2,), float(value)))


def test_rewriting_a_step_that_fails_keeps_the_checkpoint_it_replaces(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 4, Box(1), {"v": 1}, {"v": 1})
    monkeypatch.setattr(ckpt, "write_info", lambda path, info: (path.write_text("{"), 1 / 0))
    with pytest.raises(ckpt.CheckpointWriteError, match="newest complete checkpoint is checkpoint-00000004"):
        ckpt.save_checkpoint(root, 4, Box(2), {"v": 2}, {"v": 2})
    assert [p.name for p in root.iterdir()] == ["checkpoint-00000004"]
    box = Box(0)
    assert ckpt.load_checkpoint(root / "checkpoint-00000004", box)[1] == {"v": 1} and box.w[0] == 1


def test_a_crash_while_replacing_a_step_puts_the_old_checkpoint_back(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 4, Box(1), {"v": 1}, {"v": 1})
    # what a crash between moving the old folder aside and renaming the new one leaves behind
    (root / "checkpoint-00000004").rename(root / f"{ckpt.REPLACED_PREFIX}00000004-123")
    (root / f"{ckpt.TMP_PREFIX}00000004-123").mkdir()
    assert ckpt.list_checkpoints(root) == []
    ckpt.clean_stale(root)
    assert [p.name for p in root.iterdir()] == ["checkpoint-00000004"]
    assert ckpt.read_info(root / "checkpoint-00000004") == {"v": 1}
    # once the rewrite finished, the aside copy is only stale
    (root / f"{ckpt.REPLACED_PREFIX}00000004-124").mkdir()
    ckpt.clean_stale(root)
    assert [p.name for p in root.iterdir()] == ["checkpoint-00000004"]


@pytest.mark.parametrize("lost", ["model.safetensors", "trainer_state.pt", "trainer_state.json"])
def test_checkpoint_folder_missing_a_file_is_never_taken_as_the_latest(tmp_path, caplog, lost):
    make("bert", "classification", tmp_path / "run", save_every=3, epochs=1).fit(classification_records(48))
    root = tmp_path / "run" / "checkpoints"
    (root / "checkpoint-00000006" / lost).unlink()  # left so by an older crash (or by hand)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint-00000003"]
    with pytest.raises(ValueError, match=rf"checkpoint-00000006'? is not a complete checkpoint folder: it lacks {lost}"
                                         r".*newest complete checkpoint is .*checkpoint-00000003"):
        make("bert", "classification", tmp_path / "run", epochs=1).fit(classification_records(48),
                                                                       resume=root / "checkpoint-00000006")
    resumed = make("bert", "classification", tmp_path / "run", save_every=3, epochs=1)
    with caplog.at_level("WARNING", logger="finetune_lib"):
        resumed.fit(classification_records(48), resume=True)
    assert f"skipping {root / 'checkpoint-00000006'}: it lacks {lost}" in caplog.text
    assert "resuming from checkpoint-00000003" in caplog.text
    assert resumed.state.step == 6 and resumed.history[0]["step"] == 1
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint-00000003", "checkpoint-00000006"]


def test_only_incomplete_checkpoints_are_named_in_the_error(tmp_path):
    make("bert", "classification", tmp_path / "run", max_steps=2).fit(classification_records(32))
    root = tmp_path / "run" / "checkpoints"
    (root / "checkpoint-00000002" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no complete checkpoint\. It holds only incomplete checkpoint folders: "
                                         r"checkpoint-00000002 \(lacks model\.safetensors\)"):
        make("bert", "classification", tmp_path / "run", max_steps=4).fit(classification_records(32), resume=True)


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


def refused_then_allowed(first, second, data, second_data=None, changed=()):
    """`first` trains 2 steps; `second` (4 steps) is refused naming each key in `changed`, then allowed."""
    first.fit(data)
    run_json = (first.output_dir / "run.json").read_text()
    with pytest.raises(ValueError, match="(?s)made with other settings.*allow_config_change=True") as error:
        second.fit(second_data or data, resume=True)
    lines = [line.strip() for line in str(error.value).splitlines() if ": checkpoint has " in line]
    assert sorted(line.split(":")[0] for line in lines) == sorted(changed), lines
    assert (first.output_dir / "run.json").read_text() == run_json  # a refused resume writes nothing
    assert second.state.step == 0 and not second.history
    second.fit(second_data or data, resume=True, allow_config_change=True)
    assert second.state.step == 4
    assert (first.output_dir / "run.json").read_text() != run_json  # the run now records the new settings
    return lines


def test_resume_with_changed_labels_is_refused(tmp_path):
    data = classification_records(32)
    renamed = [{**r, "label": {"positive": "good", "negative": "bad"}[r["label"]]} for r in data]
    lines = refused_then_allowed(make("bert", "classification", tmp_path / "run", max_steps=2),
                                 make("bert", "classification", tmp_path / "run", max_steps=4), data, renamed,
                                 changed=["labels"])
    assert lines == ["labels: checkpoint has ['negative', 'positive'], now ['bad', 'good']"]


def test_resume_with_changed_freezing_is_refused(tmp_path):
    from finetune_lib import LayerFreezer

    lines = refused_then_allowed(
        make("bert", "classification", tmp_path / "run", max_steps=2, freezer=LayerFreezer(train_last=1)),
        make("bert", "classification", tmp_path / "run", max_steps=4, freezer=LayerFreezer(train_last=2)),
        classification_records(32), changed=["freezer"])
    assert "train_last=1" in lines[0] and "train_last=2" in lines[0]


def folder_tuner(folder, out, **kw):
    return FineTuner(str(folder), "classification", output_dir=out, progress=False, batch_size=8, **kw)


def test_resume_with_another_model_folder_is_refused(tmp_path):
    a = save_tiny_pretrained(tmp_path / "a", arch="bert", seed=0)
    b = save_tiny_pretrained(tmp_path / "b", arch="bert", seed=1)  # same architecture, other weights
    lines = refused_then_allowed(folder_tuner(a, tmp_path / "run", max_steps=2),
                                 folder_tuner(b, tmp_path / "run", max_steps=4),
                                 classification_records(32), changed=["model"])
    assert str(a) in lines[0] and str(b) in lines[0]


def test_resume_with_another_model_under_the_same_path_is_refused(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "m", arch="bert")
    folder_tuner(folder, tmp_path / "run", max_steps=2).fit(classification_records(32))
    shutil.rmtree(folder)
    save_tiny_pretrained(folder, arch="bert", layers=2)  # the same name now holds a smaller model
    again = folder_tuner(folder, tmp_path / "run", max_steps=4)
    with pytest.raises(ValueError, match=r"model_config: .*\n\s*model_parameters: checkpoint has '\d+ tensors"):
        again.fit(classification_records(32), resume=True)


def test_resume_with_another_architecture_is_refused(tmp_path):
    bert = save_tiny_pretrained(tmp_path / "bert", arch="bert")
    gpt2 = save_tiny_pretrained(tmp_path / "gpt2", arch="gpt2")
    folder_tuner(bert, tmp_path / "run", max_steps=2).fit(classification_records(32))
    other = folder_tuner(gpt2, tmp_path / "run", max_steps=4)
    with pytest.raises(ValueError, match=r"model: .*bert.*gpt2(.|\n)*model_class: checkpoint has "
                                         r"'BertForSequenceClassification', now 'GPT2ForSequenceClassification'"):
        other.fit(classification_records(32), resume=True)
    with pytest.raises(RuntimeError, match="does not match the model"):  # the flag cannot make the weights fit
        other.fit(classification_records(32), resume=True, allow_config_change=True)


@pytest.mark.parametrize("override,changed", [
    ({"hidden_act": "relu"}, ["model_config"]),                            # same shapes, other config
    ({"layers": 2}, ["model_config", "model_parameters"]),                  # other shapes
])
def test_resume_with_another_model_object_of_the_same_class_is_refused(tmp_path, override, changed):
    data = classification_records(32)
    settings = dict(batch_size=8, progress=False, output_dir=tmp_path / "run")
    tok = tiny_tokenizer(kind="encoder")
    first = FineTuner(tiny_model("bert", "classification", vocab_size=len(tok), num_labels=2), "classification",
                      tokenizer=tok, max_steps=2, **settings)
    other = tiny_model("bert", "classification", vocab_size=len(tok), num_labels=2, **override)
    second = FineTuner(other, "classification", tokenizer=tok, max_steps=4, **settings)
    if "model_parameters" not in changed:
        refused_then_allowed(first, second, data, changed=changed)
        return
    first.fit(data)
    with pytest.raises(ValueError) as error:
        second.fit(data, resume=True)
    assert [k for k in ("model_class", "model_config", "model_parameters") if f"\n  {k}: " in str(error.value)] \
        == changed


def test_fingerprint_of_a_model_object_describes_it():
    from finetune_lib.training.resume import model_fingerprint

    bert = lambda n=2, **kw: tiny_model("bert", "classification", num_labels=n, **kw)  # noqa: E731
    same, again = model_fingerprint(bert()), model_fingerprint(bert(seed=5))
    assert same == again  # the weights' values are not part of it
    assert same["model_class"] == "BertForSequenceClassification"
    assert model_fingerprint(bert(hidden_act="relu"))["model_config"] != same["model_config"]
    assert model_fingerprint(bert(3))["model_parameters"] != same["model_parameters"]
    # dropout (set by the Dropout regularizer) and label names do not make it another model
    relabeled = bert(hidden_dropout_prob=0.3)
    relabeled.config.id2label = {0: "a", 1: "b"}
    assert model_fingerprint(relabeled) == same


def test_fingerprint_names_which_tokens_carry_the_loss_only_when_not_the_default():
    from finetune_lib import Preprocessor
    from finetune_lib.training.args import TrainingArgs
    from finetune_lib.training.resume import fingerprint

    def of(pre):
        return fingerprint("m", None, "causal_lm", pre, TrainingArgs(), None)

    default = of(Preprocessor())
    assert "train_on" not in default and "label_all_subtokens" not in default  # older checkpoints still match
    assert of(Preprocessor(train_on="last_assistant"))["train_on"] == "last_assistant"
    assert of(Preprocessor(label_all_subtokens=True))["label_all_subtokens"] is True


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
