"""Gradual unfreezing: the optimizer gains each block at the right step, and a checkpoint rebuilds the
same parameter groups."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from finetune_lib.events import TrainState
from finetune_lib.freezing import LayerFreezer
from finetune_lib.testing import tiny_model


def _block_names(model, i):
    return [n for n, _ in model.named_parameters() if n.startswith(f"bert.encoder.layer.{i}.")]


def _in_optimizer(tuner):
    return {n for g in tuner.optimizer.param_groups for n in g["names"]}


def test_unfreeze_every_k_steps_adds_blocks_top_down(helpers):
    model = tiny_model("bert", "classification")
    freezer = LayerFreezer(train_last=1, unfreeze_every=2, unfreeze_unit="steps", lr_decay=0.5)
    freezer.apply(model)
    tuner = helpers.FakeTuner(model, freezer)
    assert freezer.pending_blocks == [2, 1, 0]
    assert not set(_block_names(model, 2)) & _in_optimizer(tuner)

    seen = {}
    for step in range(1, 9):
        helpers.train(model, "classification", steps=1, tuner=tuner, callbacks=[])
        state = TrainState(parameter_adder=tuner.add_trainable_parameters, model=model, optimizer=tuner.optimizer, step=step)
        freezer.on_optimizer_step(state)
        freezer.on_batch_end(state)  # idempotent: the same step never unfreezes twice
        seen[step] = len(tuner.added)
    assert seen == {1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3, 8: 3}
    assert tuner.added == [_block_names(model, 2), _block_names(model, 1), _block_names(model, 0)]
    assert freezer.unfrozen_blocks == [2, 1, 0] and freezer.pending_blocks == []
    in_opt = _in_optimizer(tuner)
    assert all(n in in_opt for i in range(4) for n in _block_names(model, i))
    assert not any(n.startswith("bert.embeddings") for n in in_opt)  # embeddings stay frozen
    # the added groups carry their layer-wise scale
    lr_of = {n: g["lr"] for g in tuner.optimizer.param_groups for n in g["names"]}
    assert lr_of["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(tuner.lr * 0.125)
    assert freezer.summary().row("block 0").status == "trained"


def test_unfreeze_every_k_epochs(helpers):
    model = tiny_model("gpt2", "classification")
    freezer = LayerFreezer(train_last=2, unfreeze_every=1, unfreeze_unit="epochs")
    freezer.apply(model)
    tuner = helpers.FakeTuner(model, freezer)
    counts = []
    for epoch in range(4):
        freezer.on_epoch_start(TrainState(parameter_adder=tuner.add_trainable_parameters, model=model, epoch=epoch))
        freezer.on_optimizer_step(TrainState(parameter_adder=tuner.add_trainable_parameters, model=model, epoch=epoch, step=100))  # ignored
        counts.append(len(tuner.added))
    assert counts == [0, 1, 2, 2]
    assert freezer.unfrozen_blocks == [1, 0]


def test_state_dict_rebuilds_the_same_groups(helpers):
    base = tiny_model("bert", "classification")
    model = copy.deepcopy(base)
    freezer = LayerFreezer(train_last=1, unfreeze_every=1, lr_decay=0.8)
    freezer.apply(model)
    tuner = helpers.FakeTuner(model, freezer)
    for step in (1, 2):
        helpers.train(model, "classification", steps=1, tuner=tuner)
        freezer.on_optimizer_step(TrainState(parameter_adder=tuner.add_trainable_parameters, model=model, step=step))
    helpers.train(model, "classification", steps=1, tuner=tuner)  # optimizer state for the new groups
    saved = json.loads(json.dumps(freezer.state_dict()))  # JSON-able
    assert saved["unfrozen_blocks"] == [2, 1]
    opt_state = tuner.optimizer.state_dict()

    # resume: new model with the trained weights, new freezer; bind -> apply -> optimizer -> load_state_dict
    resumed = copy.deepcopy(base)
    resumed.load_state_dict(model.state_dict())
    freezer2 = LayerFreezer(train_last=1, unfreeze_every=1, lr_decay=0.8)
    summary = freezer2.apply(resumed)
    assert summary.row("block 2").status == "frozen"
    tuner2 = helpers.FakeTuner(resumed, freezer2)
    freezer2.bind(tuner2).load_state_dict(saved)
    assert tuner2.added == tuner.added
    assert tuner2.optimizer_names() == tuner.optimizer_names()
    assert [g["lr"] for g in tuner2.optimizer.param_groups] == [g["lr"] for g in tuner.optimizer.param_groups]
    tuner2.optimizer.load_state_dict(opt_state)  # the groups match the checkpoint
    assert {n for n, p in resumed.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    assert freezer2.pending_blocks == [0]


def test_load_state_dict_needs_bind_and_matching_settings():
    model = tiny_model("bert", "classification")
    freezer = LayerFreezer(train_last=1, unfreeze_every=1)
    freezer.apply(model)
    with pytest.raises(RuntimeError, match="bind"):
        freezer.load_state_dict({"unfrozen_blocks": [2]})
    with pytest.raises(ValueError, match="differ"):
        freezer.bind(object()).load_state_dict({"unfrozen_blocks": [1]})
    freezer.load_state_dict({"unfrozen_blocks": []})  # nothing to replay, no tuner call
    with pytest.raises(RuntimeError, match="apply"):
        LayerFreezer(train_last=1).load_state_dict({"unfrozen_blocks": []})


def test_frozen_params_untouched_during_gradual_unfreezing(helpers):
    model = tiny_model("llama", "causal_lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    freezer = LayerFreezer(train_last=1, unfreeze_every=2)
    freezer.apply(model)
    tuner = helpers.FakeTuner(model, freezer)
    helpers.train(model, "causal_lm", steps=3, tuner=tuner, callbacks=[freezer])  # block 2 joins after step 2
    params = dict(model.named_parameters())
    for name, old in before.items():
        if name.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens")):
            assert torch.equal(params[name], old), name
        else:
            assert not torch.equal(params[name], old), name
