"""Block discovery by structure: tiny models of every architecture, a custom torch model, the error."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BartConfig,
    DistilBertConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    RobertaConfig,
)

from finetune_lib.freezing import BlockDiscoveryError, LayerFreezer, find_parts, freeze
from finetune_lib.testing import tiny_model

# Expected structure per tiny model (4 blocks per stack), written out by hand.
EXPECTED_PARTS = {
    ("gpt2", "causal_lm"): dict(
        stacks=["transformer.h"], embeddings=["transformer.wte.weight", "transformer.wpe.weight"], head=[],
        attached={3: ["transformer.ln_f.weight", "transformer.ln_f.bias"]}),
    ("gpt2", "classification"): dict(
        stacks=["transformer.h"], embeddings=["transformer.wte.weight", "transformer.wpe.weight"],
        head=["score.weight"], attached={3: ["transformer.ln_f.weight", "transformer.ln_f.bias"]}),
    ("llama", "causal_lm"): dict(
        stacks=["model.layers"], embeddings=["model.embed_tokens.weight"], head=["lm_head.weight"],
        attached={3: ["model.norm.weight"]}),
    ("llama", "classification"): dict(
        stacks=["model.layers"], embeddings=["model.embed_tokens.weight"], head=["score.weight"],
        attached={3: ["model.norm.weight"]}),
    ("bert", "classification"): dict(
        stacks=["bert.encoder.layer"],
        embeddings=["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                    "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                    "bert.embeddings.LayerNorm.bias"],
        head=["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"],
        attached={}),
    ("t5", "seq2seq"): dict(
        stacks=["encoder.block", "decoder.block"], embeddings=["shared.weight"], head=[],
        attached={3: ["encoder.final_layer_norm.weight"], 7: ["decoder.final_layer_norm.weight"]}),
    ("t5", "classification"): dict(
        stacks=["transformer.encoder.block", "transformer.decoder.block"], embeddings=["transformer.shared.weight"],
        head=["classification_head.dense.weight", "classification_head.dense.bias",
              "classification_head.out_proj.weight", "classification_head.out_proj.bias"],
        attached={3: ["transformer.encoder.final_layer_norm.weight"],
                  7: ["transformer.decoder.final_layer_norm.weight"]}),
}


@pytest.mark.parametrize("arch,task", list(EXPECTED_PARTS))
def test_parts_of_tiny_models(arch, task):
    model = tiny_model(arch, task)
    parts = find_parts(model)
    want = EXPECTED_PARTS[(arch, task)]
    assert parts.stacks == want["stacks"]
    assert parts.embeddings == want["embeddings"]
    assert parts.head == want["head"]
    n_stacks = len(want["stacks"])
    assert len(parts.blocks) == 4 * n_stacks
    for blk in parts.blocks:
        assert blk.attached == want["attached"].get(blk.index, [])
    # encoder blocks first, then decoder blocks
    if n_stacks == 2:
        assert [b.name.split(".")[-3] for b in parts.blocks] == ["encoder"] * 4 + ["decoder"] * 4
    # every parameter in exactly one part
    names = [n for n, _ in model.named_parameters()]
    listed = parts.embeddings + parts.head + [n for b in parts.blocks for n in b.params]
    assert sorted(listed) == sorted(names)


def test_tied_weights_follow_embeddings():
    model = tiny_model("gpt2", "causal_lm")
    assert model.lm_head.weight is model.transformer.wte.weight
    parts = find_parts(model)
    assert parts.aliases == {"transformer.wte.weight": ["lm_head.weight"]}
    assert parts.part_of["lm_head.weight"] == "embeddings"
    summary = freeze(model, train_last=1)
    assert not model.lm_head.weight.requires_grad  # frozen with the embeddings
    assert any("lm_head.weight = transformer.wte.weight (frozen" in note for note in summary.notes)
    freeze(model, train_last=1, freeze_embeddings=False)
    assert model.lm_head.weight.requires_grad
    # a pattern naming the alias reaches the tied tensor
    freeze(model, train_last=0, include=["lm_head.weight"])
    assert model.transformer.wte.weight.requires_grad


def _tiny(config_cls, auto, **kw):
    torch.manual_seed(0)
    return auto.from_config(config_cls(vocab_size=100, max_position_embeddings=64, **kw))


OTHER_ARCHITECTURES = {
    "roberta": (lambda: _tiny(RobertaConfig, AutoModelForSequenceClassification, hidden_size=16,
                              num_hidden_layers=3, num_attention_heads=2, intermediate_size=32),
                ["roberta.encoder.layer"], "roberta.embeddings.LayerNorm.weight", "classifier.out_proj.weight", {}),
    "distilbert": (lambda: _tiny(DistilBertConfig, AutoModelForSequenceClassification, dim=16, n_layers=3, n_heads=2,
                                 hidden_dim=32),
                   ["distilbert.transformer.layer"], "distilbert.embeddings.LayerNorm.weight", "classifier.weight", {}),
    "mistral": (lambda: _tiny(MistralConfig, AutoModelForCausalLM, hidden_size=16, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, intermediate_size=32),
                ["model.layers"], "model.embed_tokens.weight", "lm_head.weight", {2: ["model.norm.weight"]}),
    "qwen2": (lambda: _tiny(Qwen2Config, AutoModelForCausalLM, hidden_size=16, num_hidden_layers=3,
                            num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                            tie_word_embeddings=False),
              ["model.layers"], "model.embed_tokens.weight", "lm_head.weight", {2: ["model.norm.weight"]}),
    "opt": (lambda: _tiny(OPTConfig, AutoModelForCausalLM, hidden_size=16, num_hidden_layers=3,
                          num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16),
            ["model.decoder.layers"], "model.decoder.embed_positions.weight", None,
            {2: ["model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"]}),
    "bart": (lambda: _tiny(BartConfig, AutoModelForSeq2SeqLM, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32),
             ["model.encoder.layers", "model.decoder.layers"], "model.decoder.layernorm_embedding.weight", None, {}),
}


@pytest.mark.parametrize("arch", list(OTHER_ARCHITECTURES))
def test_parts_of_other_architectures(arch):
    build, stacks, an_embedding, a_head, attached = OTHER_ARCHITECTURES[arch]
    model = build()
    parts = find_parts(model)
    assert parts.stacks == stacks
    assert an_embedding in parts.embeddings
    if a_head is not None:
        assert a_head in parts.head
    for index, names in attached.items():
        assert parts.blocks[index].attached == names
    summary = LayerFreezer(train_last=1).apply(model)
    assert summary.row(f"block {len(parts.blocks) - 1}").status == "trained"
    assert summary.row("block 0").status == "frozen"


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.ff = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.ff(self.norm(x))


class CustomModel(nn.Module):
    def __init__(self, sequential: bool = False):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        blocks = [Block() for _ in range(3)]
        self.layers = nn.Sequential(*blocks) if sequential else nn.ModuleList(blocks)
        self.norm_out = nn.LayerNorm(8)
        self.out = nn.Linear(8, 2)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm_out(x).mean(1))


def test_custom_torch_model():
    model = CustomModel()
    parts = find_parts(model)
    assert parts.stacks == ["layers"]
    assert parts.embeddings == ["embed.weight"]
    assert parts.blocks[2].attached == ["norm_out.weight", "norm_out.bias"]
    assert parts.head == ["out.weight", "out.bias"]


def test_unknown_model_error_shows_module_tree():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(BlockDiscoveryError) as info:
        LayerFreezer(train_last=1).apply(model)
    message = str(info.value)
    assert "Could not find the transformer blocks of Sequential" in message
    assert "(model): Sequential" in message and "0: Linear (40 params)" in message and "1: ReLU" in message
    assert "blocks=" in message  # says how to fix it


def test_blocks_override():
    model = CustomModel(sequential=True)  # a Sequential of blocks is not discovered
    with pytest.raises(BlockDiscoveryError):
        find_parts(model)
    summary = freeze(model, train_last=1, blocks="layers")
    assert summary.trainable_names == ["layers.2.norm.weight", "layers.2.norm.bias", "layers.2.ff.weight",
                                       "layers.2.ff.bias", "norm_out.weight", "norm_out.bias", "out.weight",
                                       "out.bias"]
    with pytest.raises(BlockDiscoveryError, match="not a module"):
        find_parts(model, blocks="nope")
