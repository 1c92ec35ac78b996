"""The demo's second path: a small causal LM learns to write product descriptions from their specs.

    python -m finetune_lib.demo --only generation [--output runs/demo]

No pretrained GPT-style model can be had offline, so the "pretrained" model is a GPT-2 built from a
config and saved to a folder, with a byte-level BPE tokenizer trained here on the training split;
FineTuner then loads that folder with `from_pretrained`, exactly as it would a hub id. The data are
generated: a spec line (`name: Nova X2 | kind: phone | colour: black | storage: 128 GB | price: 299`)
and the description a shop writes for it, in one of a few house styles chosen by the kind of
product, with some repeated records (which deduplication removes). The run trains on packed rows
(several examples per row, attention kept inside each) and reports perplexity, BLEU, chrF and
exact match on the test split, with a few generated descriptions.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

BRANDS = ["Nova", "Pixelo", "Orbit", "Zento", "Kayla", "Lumen", "Vexa", "Solis"]
MODELS = ["X1", "X2", "Pro", "Mini", "Max", "Lite", "S", "Air"]
COLOURS = ["black", "white", "blue", "green", "red", "silver", "gold", "purple"]
PRICES = [49, 79, 99, 149, 199, 249, 299, 399, 499, 599]

# house style per kind of product: {name}, {colour}, {detail} and {price} come from the spec
STYLES = {
    "phone": ("The {name} phone in {colour} comes with {detail} of storage and costs {price} dollars.",
              ["64 GB", "128 GB", "256 GB", "512 GB"], "storage"),
    "earbuds": ("These {colour} {name} earbuds play for {detail} on one charge, for {price} dollars.",
                ["6 hours", "8 hours", "10 hours", "12 hours"], "battery"),
    "charger": ("A {detail} {name} charger in {colour}: fast, compact and only {price} dollars.",
                ["20 W", "30 W", "45 W", "65 W"], "power"),
    "case": ("Protect your phone with the {colour} {name} case, made of {detail}, at {price} dollars.",
             ["silicone", "leather", "recycled plastic", "clear polymer"], "material"),
}


def generate(n: int = 1500, seed: int = 0, duplicates: float = 0.05) -> list[dict[str, str]]:
    """`n` prompt/target records (spec line -> description), plus `duplicates` repeated copies."""
    rng = random.Random(seed)
    kinds = list(STYLES)
    records = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        template, details, field = STYLES[kind]
        spec = {"name": f"{rng.choice(BRANDS)} {rng.choice(MODELS)}", "colour": rng.choice(COLOURS),
                "detail": rng.choice(details), "price": rng.choice(PRICES)}
        prompt = (f"name: {spec['name']} | kind: {kind} | colour: {spec['colour']} | {field}: {spec['detail']} "
                  f"| price: {spec['price']}\ndescription:")
        records.append({"prompt": prompt, "target": " " + template.format(**spec), "kind": kind})
    records += [dict(rng.choice(records)) for _ in range(int(n * duplicates))]
    rng.shuffle(records)
    return records


def write_jsonl(path: str | Path, n: int = 1500, seed: int = 0) -> Path:
    """Write the generation demo data as JSONL (one record per line)."""
    from .data import write_records

    return write_records(path, generate(n, seed))


def build_base_model(folder: Path, texts: list[str], vocab_size: int = 800) -> Path:
    """A GPT-2 from a config (4 blocks, 128 wide) and a BPE tokenizer trained on `texts`, saved to
    `folder` the way `save_pretrained` writes a hub model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.model_max_length = 128
    config = GPT2Config(vocab_size=len(fast), n_positions=128, n_layer=4, n_embd=128, n_head=4,
                        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def main(out: Path, quick: bool = False, epochs: float = 8) -> dict[str, Any]:
    """Run the generation demo into `out`; returns the test results."""
    from finetune_lib import DatasetBuilder, FineTuner, MetricSuite, Preprocessor
    from finetune_lib.metrics import BLEU, ChrF, ExactMatch, Perplexity
    from finetune_lib.regularizers import WeightDecay
    from finetune_lib.reporting import plot_history, write_report

    start = time.perf_counter()
    # 1. the embedded data: spec lines and their descriptions, with some repeated records
    data_file = write_jsonl(out / "data" / "product_descriptions.jsonl", n=400 if quick else 1500)
    builder = DatasetBuilder.from_file(data_file, prompt="prompt", target="target").deduplicate()
    print(f"deduplication removed: {builder.dedup_counts}")
    splits = builder.split(validation=0.05, test=0.1, seed=0).remove_leakage()

    # 2. the base model: a GPT-2 from a config, tokenizer trained on the training split only
    base = build_base_model(out / "base_model", [r["prompt"] + r["target"] for r in splits.train])

    # 3. train on packed rows; watch perplexity during training, score the generated text at the end
    tuner = FineTuner(
        str(base), task="causal_lm",
        preprocessor=Preprocessor(clean=["whitespace"], max_length=96, pack=True),
        regularizers=[WeightDecay(0.01)],
        metrics=MetricSuite([Perplexity()]),
        epochs=1 if quick else epochs, batch_size=8, learning_rate=2e-3, warmup_ratio=0.05, schedule="cosine",
        log_every=10, max_new_tokens=40, output_dir=out, overwrite=True, seed=0,
    )
    tuner.fit(splits.train, splits.validation)
    stats = tuner.preprocessor.stats["train"]
    print(f"packing: {stats.examples} examples in {stats.packed_rows} rows "
          f"({stats.packing_efficiency:.0%} of each row is real tokens)")
    tuner.metrics = MetricSuite([Perplexity(), BLEU(), ChrF(), ExactMatch()])
    results = tuner.evaluate(splits.test, slices="kind")
    final = tuner.save(out / "final")

    # 4. the curves and the report
    plot_history(tuner.history, out / "curves.png", title="GPT-2 (from a config) on product descriptions")
    write_report(tuner, results, out / "report.md", figures={"Loss and validation perplexity": out / "curves.png"},
                 title="Demo: a small causal LM writes product descriptions")

    print("\nTest results (generated with greedy decoding; BLEU and chrF from sacrebleu, 0-100)")
    for name in ("loss", "perplexity", "bleu", "chrf", "exact_match"):
        print(f"{name:<12}{results[name]:>10.4f}")
    print("per kind of product: " + ", ".join(f"{k} BLEU {results[f'{k}/bleu']:.1f}" for k in STYLES))
    examples = list(splits.test)[:3]
    for record, text in zip(examples, tuner.predict([r["prompt"] for r in examples])):
        print(f"\n  spec:      {record['prompt'].splitlines()[0]}\n  generated: {text.strip()}")
    print(f"\nrun folder: {out}  (log.jsonl, checkpoints/, base_model/, final/, curves.png, report.md)")
    print(f"saved model: {final}   total time: {time.perf_counter() - start:.0f}s")
    return results
