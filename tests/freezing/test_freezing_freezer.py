"""freeze() / LayerFreezer.apply: what trains, what stays bit-for-bit fixed, selectors, patterns, LLRD."""

from __future__ import annotations

import pytest
import torch

from finetune_lib.freezing import FreezeSummary, LayerFreezer, freeze
from finetune_lib.testing import tiny_model
from finetune_lib.training.optim import parameter_groups

# train_last=2 on the tiny models (4 blocks per stack): the trainable parameters, by module prefix, and
# how many tensors that is. Written out by hand, not derived with the library's code.
TRAIN_LAST_2 = {
    ("gpt2", "causal_lm"): (["transformer.h.2.", "transformer.h.3.", "transformer.ln_f."], 2 * 12 + 2),
    ("gpt2", "classification"): (["transformer.h.2.", "transformer.h.3.", "transformer.ln_f.", "score."], 2 * 12 + 3),
    ("llama", "causal_lm"): (["model.layers.2.", "model.layers.3.", "model.norm.", "lm_head."], 2 * 9 + 2),
    ("llama", "classification"): (["model.layers.2.", "model.layers.3.", "model.norm.", "score."], 2 * 9 + 2),
    ("bert", "classification"): (["bert.encoder.layer.2.", "bert.encoder.layer.3.", "bert.pooler.", "classifier."],
                                 2 * 16 + 4),
    ("t5", "seq2seq"): (["decoder.block.2.", "decoder.block.3.", "decoder.final_layer_norm."], 2 * 13 + 1),
    ("t5", "classification"): (["transformer.decoder.block.2.", "transformer.decoder.block.3.",
                                "transformer.decoder.final_layer_norm.", "classification_head."], 2 * 13 + 1 + 4),
}


@pytest.mark.parametrize("arch,task", list(TRAIN_LAST_2))
def test_train_last_2_trains_exactly_the_expected_parameters(arch, task, helpers):
    model = tiny_model(arch, task)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = LayerFreezer(train_last=2).apply(model)

    prefixes, count = TRAIN_LAST_2[(arch, task)]
    expected = {n for n in before if any(n.startswith(p) for p in prefixes)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert len(trainable) == count
    assert set(summary.trainable_names) == expected

    helpers.train(model, task, steps=3)  # AdamW over the trainable parameters only
    for name, param in model.named_parameters():
        if name in expected:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
            assert param.grad is None


def test_summary_table_and_rows():
    model = tiny_model("bert", "classification")
    summary = LayerFreezer(train_last=1, lr_decay=0.5).apply(model)
    assert isinstance(summary, FreezeSummary)
    assert [r.part for r in summary.rows] == ["embeddings", "block 0", "block 1", "block 2", "block 3", "head"]
    assert [r.status for r in summary.rows] == ["frozen", "frozen", "frozen", "frozen", "trained", "trained"]
    assert summary.rows[4].module == "bert.encoder.layer.3"
    assert summary.trainable + summary.frozen == sum(p.numel() for p in model.parameters())
    assert summary.row("head").trainable == 32 * 32 + 32 + 2 * 32 + 2
    text = str(summary)
    assert text.splitlines()[0].split() == ["part", "module", "trainable", "frozen", "lr", "scale"]
    assert "block 3     bert.encoder.layer.3" in text and "trainable:" in text
    assert summary.to_dicts()[0]["part"] == "embeddings"


def _trainable_blocks(summary):
    return [r.part for r in summary.rows if r.part.startswith("block") and r.status == "trained"]


def test_selectors():
    model = tiny_model("llama", "classification")
    assert _trainable_blocks(freeze(model, freeze_first=3)) == ["block 3"]
    assert _trainable_blocks(freeze(model, train_fraction=0.25)) == ["block 3"]
    assert _trainable_blocks(freeze(model, train_fraction=0.3)) == ["block 2", "block 3"]  # ceil
    assert _trainable_blocks(freeze(model, train_fraction=0.0)) == []
    assert _trainable_blocks(freeze(model)) == ["block 0", "block 1", "block 2", "block 3"]
    summary = freeze(model, train_last=0)
    assert summary.trainable_names == ["score.weight"]
    assert freeze(model, train_last=0, freeze_head=True).trainable_names == []
    assert "model.embed_tokens.weight" in freeze(model, train_last=0, freeze_embeddings=False).trainable_names


def test_include_exclude_patterns():
    model = tiny_model("bert", "classification")
    # glob: also train every LayerNorm; regex: but never the query projections
    summary = freeze(model, train_last=1, include=["*LayerNorm*"], exclude=[r"attention\.self\.query"])
    names = set(summary.trainable_names)
    assert "bert.encoder.layer.0.output.LayerNorm.weight" in names
    assert "bert.embeddings.LayerNorm.bias" in names
    assert "bert.encoder.layer.3.attention.self.key.weight" in names
    assert "bert.encoder.layer.3.attention.self.query.weight" not in names
    assert "bert.encoder.layer.0.attention.output.dense.weight" not in names
    # include alone trains only what it names, plus the head
    summary = freeze(model, include=r"layer\.1\.")
    assert {n.split(".")[3] for n in summary.trainable_names if n.startswith("bert.encoder")} == {"1"}
    assert "classifier.weight" in summary.trainable_names
    with pytest.raises(ValueError, match="matches no parameter name"):
        freeze(model, include=["nothing_like_this"])


def test_bad_settings_say_how_to_fix():
    with pytest.raises(ValueError, match="at most one"):
        LayerFreezer(train_last=1, freeze_first=2)
    with pytest.raises(ValueError, match="unfreeze_unit"):
        LayerFreezer(train_last=1, unfreeze_every=2, unfreeze_unit="minutes")
    with pytest.raises(ValueError, match="lr_decay"):
        LayerFreezer(lr_decay=1.5)
    with pytest.raises(ValueError, match="only 4 blocks"):
        LayerFreezer(train_last=5).apply(tiny_model("gpt2", "classification"))
    with pytest.raises(RuntimeError, match="apply"):
        LayerFreezer(lr_decay=0.5).lr_scale  # noqa: B018


def test_layerwise_lr_decay():
    model = tiny_model("bert", "classification")
    freezer = LayerFreezer(freeze_embeddings=False, lr_decay=0.5)
    summary = freezer.apply(model)
    scale = freezer.lr_scale
    assert scale("classifier.weight") == 1.0 and scale("bert.pooler.dense.weight") == 1.0
    assert scale("bert.encoder.layer.3.output.dense.weight") == 1.0
    assert scale("bert.encoder.layer.2.output.dense.weight") == 0.5
    assert scale("bert.encoder.layer.1.output.dense.bias") == 0.25
    assert scale("bert.encoder.layer.0.attention.self.query.weight") == 0.125
    assert scale("bert.embeddings.word_embeddings.weight") == 0.0625  # the lowest
    assert [r.lr_scale for r in summary.rows] == [0.0625, 0.125, 0.25, 0.5, 1.0, 1.0]

    groups = parameter_groups(model, 1e-3, 0.01, lr_scale=freezer.lr_scale)
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr_of["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(1e-3 * 0.25)
    assert lr_of["bert.embeddings.LayerNorm.weight"] == pytest.approx(1e-3 * 0.0625)
    assert lr_of["classifier.bias"] == pytest.approx(1e-3)
    assert LayerFreezer(train_last=1).lr_scale is None  # no decay configured


def test_llrd_t5_orders_encoder_below_decoder():
    model = tiny_model("t5", "seq2seq")
    freezer = LayerFreezer(freeze_embeddings=False, lr_decay=0.5)
    freezer.apply(model)
    scale = freezer.lr_scale
    assert scale("decoder.block.3.layer.0.SelfAttention.q.weight") == 1.0
    assert scale("decoder.final_layer_norm.weight") == 1.0
    assert scale("encoder.block.3.layer.0.SelfAttention.q.weight") == 0.5**4
    assert scale("encoder.final_layer_norm.weight") == 0.5**4
    assert scale("shared.weight") == scale("lm_head.weight") == 0.5**8
