"""Where the adapters go, compared with peft's own layer selection; what trains."""

import peft
import pytest
import torch
from peft.tuners.lora import LoraLayer

from finetune_lib import Callback, LayerFreezer
from finetune_lib.adapters import LoRA, apply_lora, linear_module_names, target_module_names
from finetune_lib.testing import tiny_model, tiny_tokenizer

from .helpers import llama_and_tokenizer, text_records, tuner


def wrapped(model) -> set[str]:
    inner = model.get_base_model()
    return {name for name, m in inner.named_modules() if isinstance(m, LoraLayer)}


def peft_reference(target_modules, layers=None, arch="llama"):
    """peft's own selection: its target names with `layers_to_transform`, on a fresh model."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, "causal_lm", vocab_size=len(tok))
    pattern = {"llama": "layers", "gpt2": "h"}[arch]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, layers_to_transform=layers,
                             layers_pattern=pattern if layers is not None else None, task_type="CAUSAL_LM",
                             fan_in_fan_out=arch == "gpt2")
    return peft.get_peft_model(model, config)


@pytest.mark.parametrize("targets,peft_targets", [
    ("all-linear", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
    (r".*\.mlp\..*_proj", ["gate_proj", "up_proj", "down_proj"]),
])
@pytest.mark.parametrize("layers", [None, [2, 3], [3]])
def test_wrapped_layers_equal_peft_layers_to_transform(targets, peft_targets, layers):
    model, _ = llama_and_tokenizer()
    ours = apply_lora(model, LoRA(r=4, alpha=8, target_modules=targets), blocks=layers)
    reference = peft_reference(peft_targets, layers)
    assert wrapped(ours) == wrapped(reference)
    assert ours.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()


def test_all_linear_equals_peft_all_linear_without_a_freezer():
    model, _ = llama_and_tokenizer()
    ours = apply_lora(model, LoRA(r=4, alpha=8))
    assert wrapped(ours) == wrapped(peft_reference("all-linear"))  # peft's all-linear leaves out the LM head


def test_gpt2_conv1d_layers_are_linear_layers_too():
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", "causal_lm", vocab_size=len(tok))
    assert linear_module_names(model, [3]) == ["transformer.h.3.attn.c_attn", "transformer.h.3.attn.c_proj",
                                               "transformer.h.3.mlp.c_fc", "transformer.h.3.mlp.c_proj"]
    ours = apply_lora(model, LoRA(r=4, alpha=8), blocks=[2, 3])
    reference = peft_reference(["c_attn", "c_proj", "c_fc"], [2, 3], arch="gpt2")
    assert wrapped(ours) == wrapped(reference)
    assert ours.peft_config["default"].fan_in_fan_out


def test_target_names_are_the_linear_layers_of_the_chosen_blocks():
    model, _ = llama_and_tokenizer()
    names = target_module_names(model, LoRA(target_modules=["o_proj"]), blocks=[1, 3])
    assert names == ["model.layers.1.self_attn.o_proj", "model.layers.3.self_attn.o_proj"]


def test_in_a_tuner_with_train_last_only_the_adapters_of_the_last_blocks_train():
    model, tok = llama_and_tokenizer()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    freezer = LayerFreezer(train_last=2)
    seen = []

    class Watch(Callback):
        def on_batch_end(self, state):
            seen.append(freezer.no_grad_blocks)

    t = tuner(model, tok, adapter=LoRA(r=4, alpha=8, dropout=0.0), freezer=freezer, max_steps=3, callbacks=[Watch()])
    t.fit(text_records(24))
    assert seen == [2, 2, 2]  # the bottom two blocks ran without autograd
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[4] for n in trainable} == {"2", "3"}  # base_model.model.model.layers.<i>
    assert t.model.get_nb_trainable_parameters()[0] == sum(p.numel() for n, p in t.model.named_parameters()
                                                           if n in trainable)
    # the base weights did not move; the adapters did (B starts at zero)
    inner = t.model.get_base_model()
    for name, p in inner.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name
    assert any(p.abs().sum() > 0 for n, p in t.model.named_parameters() if "lora_B" in n)
    # the freezer's table counts the adapters of the top blocks as trainable, everything else frozen
    summary = t.freezer.summary()
    assert summary.trainable == t.model.get_nb_trainable_parameters()[0]


def test_lora_with_cache_prefix_replays_the_frozen_prefix():
    model, tok = llama_and_tokenizer()
    freezer = LayerFreezer(train_last=2, cache_prefix=True)
    t = tuner(model, tok, adapter=LoRA(r=4, alpha=8, dropout=0.0), freezer=freezer, epochs=2)
    t.fit(text_records(24))
    cache = freezer.prefix_cache
    assert cache.stored_batches == 3 and cache.replayed_batches == 3
    # the same run without the cache (dropout is 0, so the prefix computes the same thing)
    model2, tok2 = llama_and_tokenizer()
    plain = tuner(model2, tok2, adapter=LoRA(r=4, alpha=8, dropout=0.0), freezer=LayerFreezer(train_last=2), epochs=2)
    plain.fit(text_records(24))
    for (n, a), (_, b) in zip(t.model.named_parameters(), plain.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=n)
    assert [r["train/loss"] for r in t.history] == pytest.approx([r["train/loss"] for r in plain.history], rel=1e-5)


def test_summary_for_the_model_card():
    model, tok = llama_and_tokenizer()
    t = tuner(model, tok, adapter=LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
              freezer=LayerFreezer(train_last=2), max_steps=1)
    t.fit(text_records(8))
    info = t.adapter.summary(t.model)
    assert info["blocks"] == [2, 3] and info["adapted_layers"] == 4 and info["layer_names"] == ["q_proj", "v_proj"]
    assert info["trainable_parameters"] == t.model.get_nb_trainable_parameters()[0]


def test_block_lists_named_on_the_freezer_are_used():
    model, tok = llama_and_tokenizer()
    t = tuner(model, tok, adapter=LoRA(r=4, alpha=8, target_modules=["q_proj"]),
              freezer=LayerFreezer(train_last=1, blocks="model.layers"), max_steps=1)
    t.fit(text_records(8))
    assert sorted(t.model.peft_config["default"].target_modules) == ["model.layers.3.self_attn.q_proj"]


def test_seq2seq_models_take_adapters_in_their_top_decoder_blocks():
    from finetune_lib import FineTuner

    tok = tiny_tokenizer(kind="seq2seq")
    model = tiny_model("t5", "seq2seq", vocab_size=len(tok))
    t = FineTuner(model, "seq2seq", tokenizer=tok, adapter=LoRA(r=4, alpha=8, target_modules=["q", "v"]),
                  freezer=LayerFreezer(train_last=2), max_steps=2, batch_size=4, progress=False, precision="fp32")
    t.fit([{"prompt": p, "target": p[::-1]} for p in ["the phone", "great sound", "slow delivery", "refund please"]])
    adapted = sorted(t.model.peft_config["default"].target_modules)
    assert adapted == [f"decoder.block.{i}.layer.{j}.{k}.{m}" for i in (2, 3) for j, k in
                       ((0, "SelfAttention"), (1, "EncDecAttention")) for m in ("q", "v")]
    assert type(t.model).__name__ == "PeftModelForSeq2SeqLM"
