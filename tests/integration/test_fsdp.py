"""FSDP on 2 CPU processes (gloo) gives the same result as 1 process with the same effective batch,
writes full (unsharded) checkpoints and saved models from rank 0, and resumes; what it cannot train
is refused up front."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from finetune_lib import FineTuner, LayerFreezer
from finetune_lib.regularizers import L2SP, EarlyStopping
from finetune_lib.training.args import TrainingArgs
from finetune_lib.training.checkpoint import load_checkpoint
from finetune_lib.training.distributed import DistributedContext
from tests.training.helpers import model_and_tokenizer

from .fsdp_worker import MAX_GRAD_NORM, data, run
from .launch import run_two_processes

CLOSE = {"rtol": 1e-4, "atol": 1e-5}


def assert_same_weights(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        torch.testing.assert_close(got[name], value, **CLOSE, msg=name)


def test_fsdp_two_processes_match_one(tmp_path):
    # one process, the same effective batch: the reference (its checkpoints are resumed under FSDP below)
    single, single_weights, tuner = run(str(tmp_path / "single"))
    single_mid = sorted((tmp_path / "single" / "checkpoints").iterdir())[0]  # end of epoch 2 of 3

    run_two_processes("tests.integration.fsdp_worker", str(tmp_path / "fsdp"), str(single_mid))
    out = tmp_path / "fsdp"
    got = json.loads((out / "results.json").read_text())
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert got["world_size"] == 2

    # the same metrics (evaluated on uneven shards), predictions and weights as one process; the same
    # again after FSDP resumed the one-process run's checkpoint
    for results in (got["final"], got["resumed"]):
        for key in ("loss", "accuracy", "f1"):
            assert results[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    expected = tuner.predict([r["text"] for r in data()[1]])
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected]
    assert [p["score"] for p in got["predictions"]] == pytest.approx([p["score"] for p in expected], rel=1e-4)
    assert_same_weights(weights["final"], single_weights)
    assert_same_weights(weights["resumed"], single_weights)
    trainable = [n for n, p in tuner.model.named_parameters() if p.requires_grad]
    assert trainable and all("layer.0." not in n and "layer.1." not in n for n in trainable)  # 2 of 4 blocks train

    # rank 0 alone wrote the log: one record per step and one per evaluation, not two
    log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "train/loss" in r]
    assert steps == sorted(set(steps)) and len(log) == len(steps) + 3  # 3 epochs, 3 evaluations
    norms = [r["train/grad_norm"] for r in log if "train/grad_norm" in r]
    assert sum(n > MAX_GRAD_NORM for n in norms) >= 3  # clipping changed updates
    assert norms == pytest.approx([r["train/grad_norm"] for r in tuner.history if "train/grad_norm" in r], rel=1e-4)

    # the checkpoint written under FSDP is a full state dict, with the full optimizer state, in the
    # one-process format: it loads into the single-process model
    last = sorted((out / "run" / "checkpoints").iterdir())[-1]
    assert_same_weights(load_file(str(last / "model.safetensors")), single_weights)
    fresh, _ = model_and_tokenizer("bert", "classification", dropout=0.0, num_labels=2)
    saved, _ = load_checkpoint(last, fresh)
    assert_same_weights(fresh.state_dict(), single_weights)
    reference = tuner.optimizer.state_dict()
    assert saved["optimizer"]["state"].keys() == reference["state"].keys()
    for key, values in reference["state"].items():
        for name, value in values.items():
            torch.testing.assert_close(saved["optimizer"]["state"][key][name], value, rtol=1e-3, atol=1e-6)

    # one process resumes the FSDP run's mid-training checkpoint to the same end
    mid = sorted((out / "run" / "checkpoints").iterdir())[0]
    _, resumed_weights, _ = run(str(tmp_path / "single_resumed"), resume=str(mid))
    assert_same_weights(resumed_weights, single_weights)

    # save() under FSDP: one full model folder that transformers' Auto classes load
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert loaded.config.architectures == ["BertForSequenceClassification"]
    assert_same_weights(loaded.state_dict(), single_weights)
    assert (out / "final" / "README.md").is_file()


def test_distributed_setting_is_validated():
    with pytest.raises(ValueError, match="distributed must be 'auto'"):
        TrainingArgs(distributed="zero3").validate()
    assert TrainingArgs(distributed="fsdp").distributed == "fsdp"


def test_fsdp_only_under_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not DistributedContext.from_env("fsdp").fsdp  # one process: nothing to shard
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert DistributedContext.from_env("fsdp").fsdp
    ddp = DistributedContext.from_env("auto")
    assert ddp.enabled and not ddp.fsdp and ddp.rank == 1


@pytest.mark.parametrize("settings, message", [
    ({"freezer": LayerFreezer(train_last=1, unfreeze_every=2)}, "Gradual unfreezing"),
    ({"freezer": LayerFreezer(train_last=1, cache_prefix=True)}, "cache_prefix=False"),
    ({"regularizers": [L2SP(0.1)]}, "L2SP"),
    ({"regularizers": [EarlyStopping()]}, "restore_best=False"),
])
def test_fsdp_refuses_up_front(monkeypatch, settings, message):
    """Refused in the constructor, before any process group, model load or training."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    with pytest.raises(ValueError, match=message):
        FineTuner(model, "classification", tokenizer=tok, distributed="fsdp", precision="fp32", **settings)
    if "regularizers" in settings:  # DDP trains these
        FineTuner(model, "classification", tokenizer=tok, distributed="ddp", precision="fp32", **settings)
    FineTuner(model, "classification", tokenizer=tok, distributed="fsdp", precision="fp32",
              regularizers=[EarlyStopping(restore_best=False)])
