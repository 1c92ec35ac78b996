"""Benchmark harness: finetune_lib against the Hugging Face Trainer and a hand-written loop.

    python bench/run.py                          # every workload, 3 repeats (make bench)
    python bench/run.py --quick                  # smoke mode: small data, 1 epoch, 1 repeat
    python bench/run.py --workloads cls_full,cls_last2 --repeats 3

Each configuration runs in a fresh subprocess (`bench/worker.py`), runners interleaved (the order
rotates each repeat), and the machine's fp32/bf16 matmul peak is measured once per repeat. Raw runs go
to `bench/results_raw.json` (written after every run, so a long run can be watched), the summary to
`bench/results.json` (a flat object; speed ratios are ours over theirs, higher is better) and the
tables to `bench/results_tables.md`. Quick mode writes `*_quick.*` files instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import RESULT_PREFIX  # noqa: E402

EVAL_N, EVAL_N_QUICK = 40, 8
WORKLOADS: dict[str, list[str]] = {
    # ours: finetune_lib at its defaults; ours_speedups: the same with cpu_speedups=True (interleaved in one run)
    "cls_full": ["ours", "ours_speedups", "trainer_default", "trainer_tuned", "hand", "ours_random"],
    "cls_last2": ["ours", "ours_speedups", "ours_cache", "trainer_default"],
    "causal": ["ours", "ours_packed", "ours_random"],
    "eval": ["ours", "trainer"],
    # workload 5: SmolLM2 + LoRA on support conversations, ours at its defaults against TRL's SFTTrainer
    "chat": ["ours", "trl_default", "trl_tuned"],
}


def run_worker(cfg: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(BENCH / "worker.py"), json.dumps(cfg)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"config": cfg, "error": f"timed out after {timeout} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        return {"config": cfg, "error": f"exit {proc.returncode}: " + proc.stderr[-3000:]}
    res = json.loads(lines[-1][len(RESULT_PREFIX):])
    res.update(process_s=time.perf_counter() - t, load_before=load, load_after=os.getloadavg()[0])
    return res


def configs(workload: str, quick: bool) -> list[dict[str, Any]]:
    if workload == "eval":
        n = EVAL_N_QUICK if quick else EVAL_N
        return [{"workload": "eval", "runner": r, "n": k, "quick": quick} for r in WORKLOADS["eval"] for k in (n, 10 * n)]
    return [{"workload": workload, "runner": r, "quick": quick} for r in WORKLOADS[workload]]


def key(cfg: dict[str, Any]) -> str:
    return cfg["runner"] + (f"@n={cfg['n']}" if "n" in cfg else "")


# ---- summary -------------------------------------------------------------------------------------
def stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def med(s: dict[str, float] | None) -> float | None:
    return s["median"] if s else None


def summarize_runs(runs: list[dict[str, Any]], peaks: dict[str, float]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r and "not_available" not in r]
    if not ok:
        return {"errors": [r.get("error") or r.get("not_available") for r in runs], "available": False}
    out: dict[str, Any] = {"available": True, "runs": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
    if "epoch_s" in ok[0]:
        train_s = [sum(r["epoch_s"]) for r in ok]
        out["train_s"] = stats(train_s)
        out["wall_s"] = stats([r["wall_s"] for r in ok])
        out["epoch2plus_s"] = stats([statistics.mean(r["epoch_s"][1:] or r["epoch_s"]) for r in ok])
        out["samples_per_s"] = stats([r["train_examples"] * r["epochs"] / t for r, t in zip(ok, train_s)])
        out["tokens_per_s"] = stats([r["tokens_per_epoch"] * r["epochs"] / t for r, t in zip(ok, train_s)])
        if "target_tokens_per_epoch" in ok[0]:
            out["target_tokens_per_s"] = stats([r["target_tokens_per_epoch"] * r["epochs"] / t
                                                for r, t in zip(ok, train_s)])
        out["padding_efficiency"] = med(stats([r["tokens_per_epoch"] * r["epochs"] / r["padded_tokens"] for r in ok
                                               if r.get("padded_tokens")]))
        flops = [r["flops_per_token"]["train"] * r["tokens_per_epoch"] * r["epochs"] / t for r, t in zip(ok, train_s)]
        out["achieved_gflops"] = stats([f / 1e9 for f in flops])
        if peaks:
            out["util_fp32"] = med(out["achieved_gflops"]) / peaks["fp32_gflops"]
            out["util_bf16"] = med(out["achieved_gflops"]) / peaks["bf16_gflops"]
        out["loss_first_k"] = stats([r.get("loss_first_k") for r in ok])
        out["loss_last"] = stats([r.get("loss_last") for r in ok])
    if "step_ends" in ok[0]:  # workload 5: steps 2..K timed end to end (the first one warms up)
        per_step = [r["step_ends"][-1] / max(1, len(r["step_ends"]) - 1) for r in ok]
        out["step_s"] = stats(per_step)
        out["target_tokens_per_s"] = stats([r["target_tokens_per_example"] * r["batch"] / t
                                            for r, t in zip(ok, per_step)])
        out["target_tokens_per_example"] = med(stats([r["target_tokens_per_example"] for r in ok]))
        out["loss_first_k"] = stats([r.get("loss_first_k") for r in ok])
        out["wall_s"] = stats([r["wall_s"] for r in ok])
    for name in ("accuracy", "f1", "eval_s", "perplexity", "token_accuracy", "peak_rss_mb", "rss_before_mb"):
        if name in ok[0]:
            out[name] = stats([r.get(name) for r in ok])
    for name in ("precision", "optim", "sampling", "freezing", "cpu_speedups", "trainable_params", "n", "target_tokens",
                 "bf16", "gradient_checkpointing", "padding_free"):
        if name in ok[0]:
            out[name] = ok[0][name]
    out["load_avg"] = stats([r["load_before"] for r in ok])
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def flat(summary: dict[str, Any]) -> dict[str, Any]:
    """The flat results object (speed ratios: ours over theirs, higher is better)."""
    f: dict[str, Any] = {}
    peaks = summary.get("peak", {})
    f["fp32_matmul_peak_gflops"] = peaks.get("fp32_gflops")
    f["bf16_matmul_peak_gflops"] = peaks.get("bf16_gflops")

    def get(w: str, r: str, m: str) -> Any:
        v = summary.get(w, {}).get(r, {}).get(m)
        return med(v) if isinstance(v, dict) else v

    if "cls_full" in summary:
        ours = get("cls_full", "ours", "train_s")
        f["cls_full_vs_trainer_default"] = ratio(get("cls_full", "trainer_default", "train_s"), ours)
        f["cls_full_vs_trainer_tuned"] = ratio(get("cls_full", "trainer_tuned", "train_s"), ours)
        f["cls_full_vs_hand_loop"] = ratio(get("cls_full", "hand", "train_s"), ours)
        speedups = get("cls_full", "ours_speedups", "train_s")
        f["cls_full_speedups_vs_trainer_default"] = ratio(get("cls_full", "trainer_default", "train_s"), speedups)
        f["cls_full_speedups_vs_defaults"] = ratio(ours, speedups)  # what cpu_speedups=True adds
        f["cls_full_speedups_accuracy"] = get("cls_full", "ours_speedups", "accuracy")
        f["cls_full_wall_vs_trainer_default"] = ratio(get("cls_full", "trainer_default", "wall_s"),
                                                      get("cls_full", "ours", "wall_s"))
        f["cls_full_accuracy"] = get("cls_full", "ours", "accuracy")
        f["cls_full_f1"] = get("cls_full", "ours", "f1")
        f["trainer_default_accuracy"] = get("cls_full", "trainer_default", "accuracy")
        f["trainer_tuned_accuracy"] = get("cls_full", "trainer_tuned", "accuracy")
        f["hand_loop_accuracy"] = get("cls_full", "hand", "accuracy")
        f["cls_random_batches_accuracy"] = get("cls_full", "ours_random", "accuracy")
        f["cpu_bf16_utilization"] = get("cls_full", "ours", "util_bf16")
        f["cpu_fp32_utilization"] = get("cls_full", "ours", "util_fp32")
        f["cls_full_samples_per_s"] = get("cls_full", "ours", "samples_per_s")
    if "cls_last2" in summary:
        f["cls_last2_epoch2plus_vs_trainer"] = ratio(get("cls_last2", "trainer_default", "epoch2plus_s"),
                                                     get("cls_last2", "ours", "epoch2plus_s"))
        f["cls_last2_accuracy"] = get("cls_last2", "ours", "accuracy")
        f["cls_last2_speedups_epoch2plus_vs_trainer"] = ratio(get("cls_last2", "trainer_default", "epoch2plus_s"),
                                                              get("cls_last2", "ours_speedups", "epoch2plus_s"))
        f["cls_last2_speedups_epoch2plus_vs_defaults"] = ratio(get("cls_last2", "ours", "epoch2plus_s"),
                                                               get("cls_last2", "ours_speedups", "epoch2plus_s"))
        f["cls_last2_cache_epoch2plus_vs_trainer"] = ratio(get("cls_last2", "trainer_default", "epoch2plus_s"),
                                                           get("cls_last2", "ours_cache", "epoch2plus_s"))
        f["cls_last2_cache_accuracy"] = get("cls_last2", "ours_cache", "accuracy")
    if "causal" in summary:
        packed = summary["causal"].get("ours_packed", {})
        f["causal_packing_vs_unpacked"] = (ratio(get("causal", "ours_packed", "target_tokens_per_s"),
                                                 get("causal", "ours", "target_tokens_per_s"))
                                           if packed.get("available") else "not available")
        # against unpacked rows in random order (what a padded collator gives), and against our own
        # length-grouped unpacked rows (which already remove most padding)
        f["causal_packing_vs_unpacked_random"] = ratio(get("causal", "ours_packed", "target_tokens_per_s"),
                                                       get("causal", "ours_random", "target_tokens_per_s"))
        f["causal_target_tokens_per_s"] = get("causal", "ours", "target_tokens_per_s")
    if "chat" in summary:
        ours = get("chat", "ours", "target_tokens_per_s")
        f["chat_lora_vs_trl_default"] = ratio(ours, get("chat", "trl_default", "target_tokens_per_s"))
        f["chat_lora_vs_trl_tuned"] = ratio(ours, get("chat", "trl_tuned", "target_tokens_per_s"))
        f["chat_target_tokens_per_s"] = ours
        f["chat_loss_first_k"] = {r: get("chat", r, "loss_first_k") for r in WORKLOADS["chat"]}
    if "eval" in summary:
        ev = summary["eval"]
        for runner, name in (("ours", "eval_peak_rss_growth_10x"), ("trainer", "eval_peak_rss_growth_10x_trainer")):
            ks = sorted((k for k in ev if k.startswith(runner + "@")), key=lambda k: int(k.split("=")[1]))
            if len(ks) == 2 and ev[ks[0]].get("available") and ev[ks[1]].get("available"):
                a, b = med(ev[ks[0]]["peak_rss_mb"]), med(ev[ks[1]]["peak_rss_mb"])
                f[name] = round((b - a) / a, 4)
                f[name.replace("growth_10x", "mb")] = [round(a, 1), round(b, 1)]
    return f


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{v['median']:.{digits}f} [{v['min']:.{digits}f}, {v['max']:.{digits}f}]"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def tables(summary: dict[str, Any]) -> str:
    lines = []
    cols = [("train_s", "train s", 1), ("wall_s", "wall s", 1), ("epoch2plus_s", "epoch 2+ s", 2),
            ("samples_per_s", "samples/s", 1), ("step_s", "s/step", 2), ("tokens_per_s", "tokens/s", 0),
            ("target_tokens_per_s", "target tok/s", 0), ("padding_efficiency", "real/padded tok", 2),
            ("loss_first_k", "loss@K", 4), ("accuracy", "accuracy", 3), ("f1", "F1", 3),
            ("peak_rss_mb", "peak RSS MB", 0), ("achieved_gflops", "GFLOP/s", 1), ("util_fp32", "util fp32", 3),
            ("util_bf16", "util bf16", 2), ("perplexity", "perplexity", 1), ("token_accuracy", "token acc", 4),
            ("eval_s", "eval s", 2), ("precision", "precision", 0), ("load_avg", "load avg", 1)]
    for w, runners in summary.items():
        if w in ("peak", "meta"):
            continue
        present = [c for c in cols if any(isinstance(r, dict) and r.get(c[0]) is not None for r in runners.values())]
        lines.append(f"\n### {w}\n")
        lines.append("| runner | " + " | ".join(c[1] for c in present) + " |")
        lines.append("|---|" + "---|" * len(present))
        for r, s in runners.items():
            if not s.get("available"):
                lines.append(f"| {r} | not available: {'; '.join(map(str, s.get('errors', [])))[:200]} |")
                continue
            lines.append(f"| {r} | " + " | ".join(fmt(s.get(c[0]), c[2]) for c in present) + " |")
    lines.append("\nCells: median [min, max] over repeats.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {', '.join(WORKLOADS)}")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per configuration (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: small data, 1 epoch, fewer examples")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per worker (default: torch's default, one per core); 1 is steadier on a "
                         "machine shared with other jobs")
    ap.add_argument("--report", action="store_true", help="only rebuild the summary from bench/results_raw*.json")
    args = ap.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        os.environ["BENCH_THREADS"] = str(args.threads)
    suffix = "_quick" if args.quick else ""
    raw_path = BENCH / f"results_raw{suffix}.json"
    raw: dict[str, Any] = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    raw.setdefault("peak", [])
    if not args.report:  # a re-run workload's peaks are measured anew, with it
        raw["peak"] = [p for p in raw["peak"] if p.get("workload_context") not in workloads]
    for w in [] if args.report else workloads:
        raw[w] = []
    for w in [] if args.report else workloads:
        cfgs = configs(w, args.quick)
        for rep in range(repeats):
            peak = run_worker({"workload": "peak"})
            peak["workload_context"] = w
            raw["peak"].append(peak)
            order = cfgs[rep % len(cfgs):] + cfgs[: rep % len(cfgs)]
            for cfg in order:
                print(f"[{time.strftime('%H:%M:%S')}] {w} repeat {rep + 1}/{repeats} {key(cfg)} ...", flush=True)
                res = run_worker(cfg)
                res["repeat"] = rep
                raw[w].append(res)
                raw_path.write_text(json.dumps(raw, indent=1))
                brief = res.get("error") or res.get("not_available") or {
                    k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()
                    if k in ("wall_s", "accuracy", "loss_first_k", "peak_rss_mb", "eval_s")}
                print(f"    {brief}", flush=True)
    # summary over everything in the raw file (earlier invocations' workloads included)
    peaks_ok = [p for p in raw["peak"] if "error" not in p]
    peaks = {k: statistics.median(p[k] for p in peaks_ok) for k in ("fp32_gflops", "bf16_gflops")} if peaks_ok else {}
    summary: dict[str, Any] = {"peak": peaks}
    for w in WORKLOADS:
        if not raw.get(w):
            continue
        by: dict[str, list[dict[str, Any]]] = {}
        for r in raw[w]:
            by.setdefault(key(r["config"]), []).append(r)
        summary[w] = {k: summarize_runs(v, peaks) for k, v in by.items()}
    import torch
    import transformers

    meta = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "quick": args.quick,
            "repeats": repeats, "threads": args.threads or "torch default", "date": time.strftime("%Y-%m-%d %H:%M")}
    result = {**flat(summary), "meta": meta}
    results_file = BENCH / f"results{suffix}.json"
    if results_file.exists():  # keep what preprocess_bench.py, soak.py, chat_recipes.py and data_encode.py merged in
        kept = {k: v for k, v in json.loads(results_file.read_text()).items()
                if k.startswith(("preprocess_", "soak_", "chat_recipes", "data_"))}
        result.update(kept)
    results_file.write_text(json.dumps(result, indent=1) + "\n")
    (BENCH / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = tables(summary)
    (BENCH / f"results_tables{suffix}.md").write_text(text)
    print(text)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
