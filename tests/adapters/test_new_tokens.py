"""Tokens the model lacks (special tokens, a chat template's markers): the embeddings grow and train."""

import pytest
import torch
from peft import AutoPeftModelForCausalLM

from finetune_lib import LayerFreezer
from finetune_lib.adapters import LoRA

from .helpers import llama_and_tokenizer, logits, text_records, tuner

NEW = ("<|im_start|>", "<|im_end|>")


def data(n=24):
    return text_records(n, extra="<|im_start|> assistant <|im_end|>")


def test_embeddings_grow_and_their_new_rows_train_under_a_freezer():
    model, tok = llama_and_tokenizer(NEW)
    assert len(tok) == 402 and model.get_input_embeddings().num_embeddings == 400
    t = tuner(model, tok, freezer=LayerFreezer(train_last=1), max_steps=3)
    t.fit(data())
    emb, head = t.model.get_input_embeddings().weight, t.model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == t.model.config.vocab_size == 402
    assert emb.requires_grad and head.requires_grad  # trained although the freezer freezes embeddings
    trained_rows = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= trained_rows
    assert any(n.startswith("model.layers.3.") for n in trained_rows)
    assert not any(n.startswith("model.layers.0.") for n in trained_rows)


def test_the_new_rows_move_during_training():
    model, tok = llama_and_tokenizer(NEW)
    t = tuner(model, tok, freezer=LayerFreezer(train_last=1), max_steps=1)
    t._setup(None)  # load and grow, before training
    new_ids = tok.convert_tokens_to_ids(list(NEW))
    before = t.model.get_input_embeddings().weight[new_ids].detach().clone()
    t.fit(data())
    after = t.model.get_input_embeddings().weight[new_ids]
    assert not torch.equal(before, after)


def test_with_lora_the_embeddings_are_modules_to_save(tmp_path):
    model, tok = llama_and_tokenizer(NEW)
    t = tuner(model, tok, adapter=LoRA(r=4, alpha=8, dropout=0.0), freezer=LayerFreezer(train_last=2), max_steps=3)
    t.fit(data())
    config = t.model.peft_config["default"]
    assert set(config.modules_to_save) == {"model.embed_tokens", "lm_head"}
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert "base_model.model.model.embed_tokens.modules_to_save.default.weight" in trainable
    assert "base_model.model.lm_head.modules_to_save.default.weight" in trainable
    assert all("lora_" in n or ".modules_to_save." in n for n in trainable)
    # the adapter folder holds the trained embeddings; peft grows the base to the tokenizer and loads them
    t.save(tmp_path / "adapter")
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    text = "the phone <|im_start|> assistant <|im_end|>"
    assert torch.equal(logits(loaded, tok, text), logits(t.model, tok, text))


def test_nothing_grows_when_the_tokenizer_fits():
    model, tok = llama_and_tokenizer()
    t = tuner(model, tok, max_steps=1)
    t.fit(text_records(8))
    assert t.model.get_input_embeddings().num_embeddings == len(tok) == 400


@pytest.mark.parametrize("with_lora", [True, False])
def test_new_tokens_with_a_prefix_cache_are_refused_before_the_model_changes(with_lora):
    # the grown embeddings train, so the frozen prefix's cached states would go stale
    model, tok = llama_and_tokenizer(new_tokens=("<|x|>",))
    rows = model.get_input_embeddings().weight.shape[0]
    t = tuner(model, tok, adapter=LoRA(r=4) if with_lora else None,
              freezer=LayerFreezer(train_last=2, cache_prefix=True))
    with pytest.raises(ValueError, match=r"cache_prefix=True .* 1 token\(s\) the model lacks.*cache_prefix=False"):
        t.fit(text_records(8))
    assert model.get_input_embeddings().weight.shape[0] == rows  # not resized
    assert not hasattr(model, "peft_config")
