"""Bad adapter input is refused before training, each with the fix named."""

import sys

import pytest

from finetune_lib import FineTuner, LayerFreezer
from finetune_lib.adapters import LoRA

from .helpers import llama_and_tokenizer, text_records, tuner


@pytest.mark.parametrize("kwargs,match", [
    ({"r": 0}, r"r must be an integer >= 1"),
    ({"r": 2.5}, r"r must be an integer >= 1"),
    ({"r": True}, r"r must be an integer >= 1"),
    ({"alpha": 0}, r"alpha must be a positive number"),
    ({"alpha": float("nan")}, r"alpha must be a positive number"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"target_modules": []}, r"target_modules must be 'all-linear', a regular expression or a non-empty list"),
    ({"target_modules": ["q_proj", 3]}, r"target_modules must be"),
    ({"target_modules": "(unclosed"}, r"neither 'all-linear' nor a valid regular expression"),
    ({"modules_to_save": "lm_head"}, r"modules_to_save must be a list of module names"),
    ({"quantize": "8bit"}, r"quantize must be None or '4bit'"),
])
def test_settings_are_checked_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRA(**kwargs)


def test_lists_become_tuples_and_the_repr_is_stable():
    a, b = LoRA(target_modules=["q_proj", "v_proj"]), LoRA(target_modules=("q_proj", "v_proj"))
    assert a == b and repr(a) == repr(b) and a.target_modules == ("q_proj", "v_proj")


def test_target_modules_that_match_nothing_are_refused_naming_the_linear_layers():
    model, tok = llama_and_tokenizer()
    t = tuner(model, tok, adapter=LoRA(target_modules=["query", "value"]), freezer=LayerFreezer(train_last=2))
    with pytest.raises(ValueError, match=r"match no linear layer in blocks \[2, 3\]. The linear layers there are "
                                         r"named \['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', "
                                         r"'down_proj'\] \(e.g. model.layers.2.self_attn.q_proj\)"):
        t.fit(text_records(8))
    assert t.state is None  # refused before the run started


def test_a_regex_that_matches_nothing_is_refused_too():
    model, tok = llama_and_tokenizer()
    with pytest.raises(ValueError, match=r"match no linear layer in the model's blocks"):
        tuner(model, tok, adapter=LoRA(target_modules=r".*\.attn\.c_attn")).fit(text_records(8))


def test_missing_peft_is_named_with_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # what a missing package looks like to import
    model, tok = llama_and_tokenizer()
    with pytest.raises(ImportError, match=r"pip install 'finetune_lib\[peft\]'"):
        tuner(model, tok, adapter=LoRA())


def test_qlora_on_a_cpu_is_refused_with_the_reason():
    model, tok = llama_and_tokenizer()
    with pytest.raises(ValueError, match=r"QLoRA\) needs a CUDA GPU: bitsandbytes' 4-bit weights are computed by "
                                         r"CUDA kernels, and this run is on cpu"):
        tuner(model, tok, adapter=LoRA(quantize="4bit"), device="cpu")


def test_gradual_unfreezing_with_an_adapter_is_refused():
    model, tok = llama_and_tokenizer()
    with pytest.raises(ValueError, match=r"Gradual unfreezing \(unfreeze_every\) is not supported with an adapter: "
                                         r"with LoRA, train_last=N means adapters in the last N blocks"):
        tuner(model, tok, adapter=LoRA(), freezer=LayerFreezer(train_last=1, unfreeze_every=2))


@pytest.mark.parametrize("freezer", [LayerFreezer(train_last=1, include="norm"),
                                     LayerFreezer(train_last=1, freeze_embeddings=False)])
def test_freezer_settings_that_train_base_weights_are_refused(freezer):
    model, tok = llama_and_tokenizer()
    with pytest.raises(ValueError, match=r"would train base weights next to the adapter.*LoRA\(modules_to_save="):
        tuner(model, tok, adapter=LoRA(), freezer=freezer)


def test_a_freezer_that_trains_no_block_leaves_lora_nowhere_to_go():
    model, tok = llama_and_tokenizer()
    with pytest.raises(ValueError, match=r"trains no block, so LoRA has nowhere to go"):
        tuner(model, tok, adapter=LoRA(), freezer=LayerFreezer(train_last=0)).fit(text_records(8))


def test_classification_with_lora_is_refused():
    model, tok = llama_and_tokenizer()
    with pytest.raises(ValueError, match=r"supported for task 'causal_lm' and 'seq2seq', not 'classification'"):
        FineTuner(model, "classification", tokenizer=tok, adapter=LoRA())


def test_an_adapter_must_be_a_lora_object():
    model, tok = llama_and_tokenizer()
    with pytest.raises(TypeError, match=r"adapter must be a LoRA\(\.\.\.\)"):
        tuner(model, tok, adapter={"r": 8})
