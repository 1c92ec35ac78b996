"""save(): the adapter folder peft loads (with its base when needed), and merged weights."""

import json
import os

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, pipeline

from finetune_lib import LayerFreezer
from finetune_lib.adapters import LoRA
from finetune_lib.testing import tiny_tokenizer

from .helpers import llama_and_tokenizer, logits, text_records, tuner


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tuner trained with LoRA on the last 2 blocks, from a model object (so its base is written)."""
    model, tok = llama_and_tokenizer()
    t = tuner(model, tok, adapter=LoRA(r=4, alpha=8, dropout=0.1), freezer=LayerFreezer(train_last=2), epochs=2)
    t.fit(text_records(24))
    root = tmp_path_factory.mktemp("saved")
    t.save(root / "adapter")
    t.save(root / "merged", merge=True)
    return t, tok, root


def test_adapter_folder_loads_with_autopeft_from_another_working_directory(trained, tmp_path, monkeypatch):
    t, tok, root = trained
    folder = root / "adapter"
    names = set(os.listdir(folder))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md", "base"} <= names
    assert "model.safetensors" not in names  # only the adapter, the base lives in base/
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((folder / "base").resolve())  # absolute: peft reads it from the cwd
    assert sorted(config["target_modules"]) == sorted(
        f"model.layers.{i}.{m}" for i in (2, 3) for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                         "mlp.down_proj"))
    monkeypatch.chdir(tmp_path)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(folder))
    assert torch.equal(logits(loaded, tok), logits(t.model, tok))


def test_base_folder_is_the_plain_base_model(trained):
    t, tok, root = trained
    base = AutoModelForCausalLM.from_pretrained(root / "adapter" / "base")
    with t.model.disable_adapter():
        assert torch.equal(logits(base, tok), logits(t.model, tok))


def test_merged_folder_loads_with_auto_classes_and_pipeline(trained):
    t, tok, root = trained
    folder = root / "merged"
    assert not (folder / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits(merged, tok), logits(t.model, tok), rtol=1e-5, atol=1e-5)
    generate = pipeline("text-generation", model=str(folder))
    out = generate("the phone", max_new_tokens=4, do_sample=False, return_full_text=False)
    ids = t.model.generate(**tok(["the phone"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"] == tok.decode(ids[0][len(tok("the phone").input_ids):], skip_special_tokens=True)


def test_merging_leaves_the_tuners_adapters_in_place(trained, tmp_path):
    t, tok, _ = trained
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.save(tmp_path / "again", merge=True)
    assert isinstance(t.model, PeftModel)
    after = dict(t.model.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_a_folder_source_is_pointed_at_not_copied(tmp_path):
    model, tok = llama_and_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    os.chdir(tmp_path)
    try:
        t = tuner("base", None, adapter=LoRA(r=4, alpha=8), max_steps=2)
        t.fit(text_records(16))
        t.save(tmp_path / "out")
    finally:
        os.chdir("/")
    assert not (tmp_path / "out" / "base").exists()
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert torch.equal(logits(loaded, tok), logits(t.model, tok))


def test_the_model_card_describes_the_adapter(trained):
    t, _, root = trained
    card = (root / "adapter" / "README.md").read_text()
    assert "LoRA" in card and "r=4" in card and "alpha=8" in card
    assert f"{t.model.get_nb_trainable_parameters()[0]:,}" in card
    assert "library_name: peft" in card
    assert "### Adapters and layer freezing" in card and "### Layer freezing" not in card
    merged = (root / "merged" / "README.md").read_text()
    assert "merged into the weights" in merged and "library_name: transformers" in merged


def test_tiny_tokenizer_is_saved_beside_the_adapter(trained):
    _, tok, root = trained
    again = tiny_tokenizer()
    saved = type(tok).from_pretrained(root / "adapter")
    assert saved("the phone").input_ids == again("the phone").input_ids
