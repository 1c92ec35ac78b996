"""GGUF checkpoints: FineTuner("model.gguf") trains a plain float32 model and saves ordinary safetensors."""

import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_lib import FineTuner, LayerFreezer
from finetune_lib.testing import tiny_model, tiny_tokenizer
from finetune_lib.training.gguf import load_gguf_model

from ..adapters.helpers import logits, text_records

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A tiny Llama and its tokenizer written as a GGUF file (float32 tensors), and the model itself."""
    from ..adapters.helpers import write_tiny_gguf

    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})  # GGUF's byte-level tokenizer adds it
    model = tiny_model("llama", "causal_lm", vocab_size=len(tok))
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, tok)
    return path, model, tok


def test_loads_a_plain_float32_model_equal_to_the_source(gguf_file):
    path, source, tok = gguf_file
    model = load_gguf_model(path, AutoModelForCausalLM)
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model) is type(source)
    assert torch.equal(logits(model, tok), logits(source, tok))


def test_quantized_weights_load_de_quantized(gguf_file, tmp_path):
    from ..adapters.helpers import write_tiny_gguf

    _, source, tok = gguf_file
    path = write_tiny_gguf(tmp_path / "q8.gguf", source, tok, quantize=True)
    model = load_gguf_model(path, AutoModelForCausalLM)
    weight, original = model.model.layers[0].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.float32 and not torch.equal(weight, original)  # Q8_0: close, not the same
    torch.testing.assert_close(weight.detach(), original.detach(), rtol=0,
                               atol=float(original.detach().abs().max()) / 100)


def test_finetuner_trains_from_a_gguf_file_and_saves_safetensors(gguf_file, tmp_path):
    path, source, tok = gguf_file
    t = FineTuner(str(path), "causal_lm", epochs=1, batch_size=8, learning_rate=1e-2, progress=False,
                  precision="fp32", freezer=LayerFreezer(train_last=2))
    assert t.tokenizer is None
    t.fit(text_records(16))
    assert t.tokenizer("the phone").input_ids == tok("the phone").input_ids  # the tokenizer from the file
    t.save(tmp_path / "out")
    names = set(os.listdir(tmp_path / "out"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert "quantization_config" not in reloaded.config.to_dict()
    assert torch.equal(logits(reloaded, tok), logits(t.model, tok))
    assert not torch.equal(logits(reloaded, tok), logits(source, tok))  # it trained
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("the phone").input_ids == tok("the phone").input_ids


def test_lora_from_a_gguf_file_writes_its_base(gguf_file, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from finetune_lib.adapters import LoRA

    path, _, tok = gguf_file
    t = FineTuner(str(path), "causal_lm", max_steps=2, batch_size=8, learning_rate=1e-2, progress=False,
                  precision="fp32", adapter=LoRA(r=4, alpha=8))
    t.fit(text_records(16))
    t.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "base" / "model.safetensors").is_file()
    monkeypatch.chdir(tmp_path / "adapter" / "base")  # any working directory
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    assert torch.equal(logits(loaded, tok), logits(t.model, tok))


def test_missing_gguf_package_is_named_with_the_extra(gguf_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r"needs the gguf package\(s\): pip install 'finetune_lib\[gguf\]'"):
        FineTuner(str(gguf_file[0]), "causal_lm")


def test_a_missing_file_is_named_when_the_tuner_is_built(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No GGUF file at .*nope.gguf"):
        FineTuner(str(tmp_path / "nope.gguf"), "causal_lm", progress=False)
