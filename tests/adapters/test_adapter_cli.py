"""The CLI's `adapter:` key: a LoRA run from a config, saved as an adapter folder peft loads."""

from __future__ import annotations

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM

from finetune_lib import cli
from finetune_lib.testing import sample_texts, save_tiny_pretrained


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_lora")
    model = save_tiny_pretrained(root / "model", arch="llama", task="causal_lm")
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts(40, seed=1, max_words=10)))
    return model, data


def config(model, data, output, adapter) -> dict:
    return {"model": str(model), "task": "causal_lm", "data": {"path": str(data)},
            "split": {"validation": 0.0, "test": 0.2, "seed": 0}, "freezer": {"train_last": 1},
            "adapter": adapter, "preprocessor": {"max_length": 24}, "output_dir": str(output),
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "progress": False,
                         "precision": "fp32"}}


@pytest.mark.parametrize("adapter", [{"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                                     {"LoRA": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}])
def test_adapter_key_trains_lora_in_the_last_blocks(assets, tmp_path, capsys, adapter):
    model, data = assets
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config(model, data, tmp_path / "run", adapter)))
    assert cli.main(["train", str(cfg), "--quiet"]) == 0
    results = json.loads(capsys.readouterr().out)
    final = tmp_path / "run" / "final"
    saved = json.loads((final / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8
    # train_last=1 of a 4-block tiny Llama: adapters in the last block only
    assert sorted(saved["target_modules"]) == ["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.v_proj"]
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(final))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in loaded.named_parameters())
    assert torch.isfinite(torch.tensor(results["metrics"]["loss"]))


@pytest.mark.parametrize("adapter, message", [
    ({"rank": 4}, "unknown key(s) 'rank' in adapter"),
    ({"r": 0}, "LoRA r must be an integer >= 1"),
    ("lora", "adapter must be a mapping of LoRA arguments"),
])
def test_bad_adapter_key_fails_before_loading(tmp_path, capsys, adapter, message):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "no/such/model", "task": "causal_lm",
                               "data": {"path": str(tmp_path / "missing.jsonl")}, "adapter": adapter}))
    assert cli.main(["train", str(cfg), "--quiet"]) == 2
    assert message in capsys.readouterr().err
