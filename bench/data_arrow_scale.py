"""Scale check (not a test): deduplicate -> split(stratify) -> leakage on N generated short texts, the list path
(``from_records``) against the Arrow path (``from_hf``), each in its own process for a clean peak RSS.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/data_arrow_scale.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORDS = ("good bad phone battery screen great awful ok fine broken cheap fast slow love hate case charger "
         "sound camera price").split()


def generate(n: int) -> dict[str, list]:
    import numpy as np

    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    picks = rng.integers(0, len(WORDS), size=(n, 6))
    lengths = rng.integers(3, 7, size=n)
    texts = [" ".join(words[p[:k]]) for p, k in zip(picks, lengths, strict=True)]
    shout = rng.random(n) < 0.05
    texts = [t.upper() + "!" if s else t for t, s in zip(texts, shout, strict=True)]
    labels = rng.choice(["pos", "neg", "neu"], size=n).tolist()
    return {"text": texts, "label": labels}


def run(path: str, n: int) -> dict:
    from finetune_lib.data import DatasetBuilder

    data = generate(n)
    if path == "arrow":
        import datasets
    times = {}
    start = time.perf_counter()
    if path == "list":
        builder = DatasetBuilder.from_records([{"text": t, "label": y} for t, y in zip(data["text"], data["label"],
                                                                                         strict=True)])
    else:
        builder = DatasetBuilder.from_hf(datasets.Dataset.from_dict(data))
    del data
    times["load_s"] = time.perf_counter() - start
    t = time.perf_counter()
    builder.deduplicate()
    times["dedup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    splits = builder.split(validation=0.1, test=0.1, stratify=True, seed=0)
    times["split_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = splits.leakage()
    times["leakage_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start
    return {"path": path, "n": n, "kept": len(builder), "dedup": builder.dedup_counts, "sizes": splits.sizes,
            "leaked": report.total, **{k: round(v, 2) for k, v in times.items()},
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--path", choices=["list", "arrow"])
    args = parser.parse_args()
    if args.path:
        print(json.dumps(run(args.path, args.n)))
        return
    for path in ("arrow", "list"):
        out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--path", path], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        print(out, flush=True)


if __name__ == "__main__":
    main()
