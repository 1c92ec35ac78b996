"""Workload 5's recipes table: the ways a user can fine-tune SmolLM2 on the support conversations.

    python bench/chat_recipes.py [--epochs 1] [--quick]

Each recipe runs in a fresh process (`bench/worker.py`-style isolation, one after another): full
fine-tune, the last N blocks, the last N blocks with the frozen prefix cached, LoRA on every block,
LoRA on the last N blocks. For each: seconds per epoch (mean over epochs, the first included, since
the prefix cache fills then), peak RSS, trainable parameters, and held-out chrF and perplexity.
Results go to `bench/results.json` under `chat_recipes` and to `bench/chat_recipes.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

RECIPES = {
    "full": {"freezer": None, "adapter": False, "lr": 5e-5},
    "last_4": {"freezer": 4, "adapter": False, "lr": 5e-4},
    "last_4_cache": {"freezer": 4, "cache": True, "adapter": False, "lr": 5e-4},
    "lora_all": {"freezer": None, "adapter": True, "lr": 2e-3},
    "lora_last_4": {"freezer": 4, "adapter": True, "lr": 2e-3},
}


def run_one(name: str, epochs: float, quick: bool) -> dict[str, Any]:
    """One recipe in this process: train, evaluate on held-out conversations, measure."""
    import resource

    from chat_common import CHAT, LORA, plain_smollm2
    from common import SEED

    from finetune_lib import Callback, FineTuner, LayerFreezer, MetricSuite, Preprocessor
    from finetune_lib.adapters import LoRA
    from finetune_lib.demo.chat_data import support_conversations
    from finetune_lib.metrics import ChrF, Perplexity

    recipe = RECIPES[name]
    train, test = support_conversations(60 if quick else CHAT["train"], 12 if quick else 36, seed=SEED)

    class Epochs(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_epoch_start(self, state: Any) -> None:
            self._t = time.perf_counter()

        def on_epoch_end(self, state: Any) -> None:
            self.times.append(time.perf_counter() - self._t)

    clock = Epochs()
    freezer = (LayerFreezer(train_last=recipe["freezer"], cache_prefix=recipe.get("cache", False))
               if recipe["freezer"] else None)
    adapter = LoRA(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"]) if recipe["adapter"] else None
    tuner = FineTuner(str(plain_smollm2()), task="causal_lm",
                      preprocessor=Preprocessor(clean=[], max_length=CHAT["max_length"]), freezer=freezer,
                      adapter=adapter, metrics=MetricSuite([Perplexity(), ChrF()]), callbacks=[clock],
                      epochs=epochs, batch_size=CHAT["batch"], learning_rate=recipe["lr"], warmup_ratio=0.1,
                      max_new_tokens=40, seed=SEED, progress=False, loggers=())
    tuner.fit(train)
    results = tuner.evaluate(test)
    return {"recipe": name, "epoch_s": clock.times, "mean_epoch_s": sum(clock.times) / len(clock.times),
            "trainable_params": sum(p.numel() for p in tuner.model.parameters() if p.requires_grad),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "test_chrf": results["chrf"], "test_perplexity": results["perplexity"], "lr": recipe["lr"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process's recipe
    args = ap.parse_args()
    if args.one:
        print("RECIPE_RESULT " + json.dumps(run_one(args.one, args.epochs, args.quick)), flush=True)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for name in RECIPES:
        cmd = [sys.executable, __file__, "--one", name, "--epochs", str(args.epochs)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RECIPE_RESULT ")]
        row = json.loads(lines[-1][len("RECIPE_RESULT "):]) if lines else {"recipe": name,
                                                                              "error": proc.stderr[-2000:]}
        print(row, flush=True)
        rows.append(row)
    suffix = "_quick" if args.quick else ""
    (BENCH / f"chat_recipes{suffix}.json").write_text(json.dumps(rows, indent=1) + "\n")
    if not args.quick:
        path = BENCH / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results["chat_recipes"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                    if k != "epoch_s"} for r in rows]
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
