"""precision='auto' picks by hardware (probes mocked); explicit choices are checked."""

import pytest
import torch

from finetune_lib.training import precision as P


@pytest.mark.parametrize("cuda_bf16,flags,device,expected,scaler", [
    (True, set(), "cuda", "bf16", False),
    (False, set(), "cuda", "fp16", True),
    (False, {"avx512_bf16"}, "cpu", "bf16", False),
    (False, {"amx_bf16", "avx2"}, "cpu", "bf16", False),
    (False, {"avx2", "avx512f"}, "cpu", "fp32", False),
])
def test_auto(monkeypatch, caplog, cuda_bf16, flags, device, expected, scaler):
    monkeypatch.setattr(P, "cuda_bf16_supported", lambda: cuda_bf16)
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
    with caplog.at_level("INFO", logger="finetune_lib"):
        choice = P.resolve_precision("auto", torch.device(device))
    assert choice.name == expected and choice.use_scaler == scaler
    assert f"precision: {expected}" in caplog.text


def test_explicit_choices(monkeypatch):
    assert P.resolve_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
    assert P.resolve_precision("fp32", torch.device("cpu")).dtype is None
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        P.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="Choose one of"):
        P.resolve_precision("int8", torch.device("cpu"))
    monkeypatch.setattr(P, "cuda_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="does not support bf16"):
        P.resolve_precision("bf16", torch.device("cuda"))


def test_bf16_training_runs_on_cpu():
    from finetune_lib import FineTuner

    from .helpers import classification_records, model_and_tokenizer

    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    tuner = FineTuner(model, "classification", tokenizer=tok, max_steps=2, batch_size=8, precision="bf16",
                      progress=False)
    history = tuner.fit(classification_records(16))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, weights stay fp32
    assert history[-1]["train/loss"] > 0
