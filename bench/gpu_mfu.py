"""Model FLOPs utilization (MFU) of `FineTuner` on a GPU: a GPT-2-124M-sized model at 1,024 tokens.

    python bench/gpu_mfu.py                      # CUDA: eager, compiled, compiled on full rows (sized for ~4-5 min)
    python bench/gpu_mfu.py --variants eager,compiled --steps 40
    python bench/gpu_mfu.py --quick              # CPU smoke run: a tiny GPT-2 at 128 tokens, fp32, seconds

The model is built from `GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024,
vocab_size=50257)` (nothing is downloaded), with a byte-level BPE tokenizer trained here
(`finetune_lib.testing.tiny_tokenizer`; the model keeps GPT-2's 50,257-row vocabulary, so its
FLOPs are GPT-2's). Each variant trains in a fresh process with `FineTuner(task="causal_lm",
precision="auto")` (bf16 on the GPU) for `--steps` optimizer steps of `--batch` rows:

- `eager`: packed rows (`Preprocessor(pack=True, max_length=1024)`), several synthetic texts per
  1,024-token row with a block-diagonal attention mask, batches in random order;
- `compiled`: the same with `compile=True` (torch.compile);
- `compiled_full_rows` / `eager_full_rows`: one synthetic text per row, truncated to exactly 1,024
  tokens (a plain causal mask, which lets SDPA pick its fastest kernels).

Timing: a callback synchronizes the device at the end of optimizer step `--warmup` and of the last
step (no other sync is added; the library reads the loss back only at the last step), so the
warm-up, compilation included, is outside the timed window. Tokens are the rows' positions (B x T
per step, padding included); the real (non-padding) tokens are reported too.

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B, as nanoGPT's `estimate_mfu`):
`6 N + 12 L H Q T`, with L layers, H heads, Q the head size and T the sequence length (the
attention term counts the whole T x T score matrix, masked or not), and N the parameters counted
as nanoGPT's `get_num_params()`: every parameter once, except position embeddings; the token
embedding counts because the LM head is tied to it. GPT-2-124M: N = 123,653,376, and at T = 1,024,
6N + 12*12*12*64*1024 = 855,166,464 FLOPs per token.

MFU is reported against two peaks: the dense bf16 peak of the GPU from its datasheet (`PEAKS`, chosen
by `torch.cuda.get_device_name()`; none for an unknown GPU) and a measured one (the best of several
8,192^3 bf16 matmuls; fp32 1,024^3 in `--quick` mode on a CPU). Results go to `bench/gpu_mfu.json`
(`bench/gpu_mfu_quick.json` in quick mode), a flat object, after every variant; a Markdown table
is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import RESULT_PREFIX, SEED, best_matmul_seconds, emit, gpt2  # noqa: E402

#: dense bf16 peaks (FLOP/s) from the datasheets, by a substring of `torch.cuda.get_device_name()`;
#: the first match wins (so "H100 PCIe" before the SXM "H100")
PEAKS: list[tuple[tuple[str, ...], float, str]] = [
    (("H200",), 989.4e12, "H200 (SXM/NVL): 989.4 TFLOP/s dense bf16"),
    (("H100", "PCIe"), 756e12, "H100 PCIe: 756 TFLOP/s dense bf16"),
    (("H100",), 989.4e12, "H100 SXM: 989.4 TFLOP/s dense bf16"),
    (("A100",), 312e12, "A100: 312 TFLOP/s dense bf16"),
]

FULL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "seq": 1024, "vocab": 50257, "batch": 16, "steps": 30,
        "warmup": 10, "device": "cuda", "precision": "auto", "tokenizer_vocab": 2000}
QUICK = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq": 128, "vocab": 2000, "batch": 4, "steps": 6,
         "warmup": 2, "device": "cpu", "precision": "fp32", "tokenizer_vocab": 2000}
VARIANTS = ("eager", "compiled", "eager_full_rows", "compiled_full_rows")
DEFAULT_VARIANTS = ("eager", "compiled", "compiled_full_rows")


# ---- FLOPs and peaks ---------------------------------------------------------------------------------
def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq: int) -> float:
    """Training FLOPs per token by PaLM's formula: 6N + 12 * L * H * Q * T (forward and backward)."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq


def counted_params(model: Any) -> int:
    """nanoGPT's `get_num_params()`: every parameter once, minus the embedding tables that are not
    tied to the output layer (GPT-2: the position embeddings; the token embedding is the LM head)."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    untied = {id(m.weight): m.weight.numel() for m in model.modules()
              if isinstance(m, torch.nn.Embedding) and m.weight is not head_weight}
    return total - sum(untied.values())


def table_peak(device_name: str) -> tuple[float | None, str]:
    """The datasheet dense bf16 peak for a GPU name, and where it comes from (None: unknown GPU)."""
    for needles, peak, source in PEAKS:
        if all(n in device_name for n in needles):
            return peak, source
    return None, f"no datasheet peak known for {device_name!r}"


def measured_peak(device: str, quick: bool) -> dict[str, Any]:
    """Best of several n^3 matmuls: bf16 8,192^3 on a GPU, fp32 1,024^3 on a CPU (quick mode)."""
    import torch

    n, dtype, reps = (1024, torch.float32, 5) if quick else (8192, torch.bfloat16, 20)
    best = best_matmul_seconds(n, dtype, reps, device, warmup=2)  # the first calls pick and warm the kernel
    return {"peak_measured_flops": 2 * n**3 / best, "peak_measured_what": f"{str(dtype)[6:]} matmul {n}^3, best of {reps}"}


# ---- one variant, in its own process -----------------------------------------------------------------
def synthetic_records(tokenizer: Any, rows: int, seq: int, full_rows: bool) -> list[dict[str, str]]:
    """Texts over the tokenizer's training vocabulary: for packing, texts of 1-400 words until they
    hold 10% more tokens than `rows` full rows; for full rows, `rows` texts longer than `seq` tokens."""
    from finetune_lib.testing import sample_texts

    if full_rows:
        return [{"text": t} for t in sample_texts(rows, seed=SEED, min_words=seq + 16, max_words=seq + 64)]
    records, tokens, seed = [], 0, SEED
    while tokens < 1.1 * rows * seq:
        texts = sample_texts(256, seed=seed, min_words=1, max_words=min(400, seq // 3))
        tokens += sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + len(texts)
        records += [{"text": t} for t in texts]
        seed += 1
    return records


def run_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    from finetune_lib import Callback, FineTuner, Preprocessor
    from finetune_lib.testing import tiny_tokenizer

    variant, quick, device = cfg["variant"], cfg["quick"], cfg["device"]
    compiled, full_rows = variant.startswith("compiled"), variant.endswith("full_rows")
    result: dict[str, Any] = {"variant": variant, **measured_peak(device, quick)}
    tok = tiny_tokenizer(vocab_size=cfg["tokenizer_vocab"])
    tok.model_max_length = cfg["seq"]
    model = gpt2(cfg["vocab"], cfg["n_layer"], cfg["n_embd"], cfg["n_head"], cfg["seq"], tok)
    n_params = counted_params(model)
    head_dim = cfg["n_embd"] // cfg["n_head"]
    records = synthetic_records(tok, cfg["batch"] * cfg["steps"], cfg["seq"], full_rows)
    steps, warmup = cfg["steps"], cfg["warmup"]

    class Clock(Callback):
        """Syncs and reads the clock after step `warmup` and the last step; counts the timed tokens."""

        def __init__(self) -> None:
            self.t0 = self.t1 = 0.0
            self.positions = self.targets = 0
            self.flops = 0.0
            self.lengths: set[int] = set()
            self.started = time.perf_counter()

        def on_batch_start(self, state: Any) -> None:
            if state.step >= warmup:  # a micro-batch of a timed step
                ids = state.batch["input_ids"]
                self.positions += ids.numel()
                self.flops += ids.numel() * flops_per_token(n_params, cfg["n_layer"], cfg["n_head"], head_dim,
                                                            ids.shape[1])
                self.lengths.add(int(ids.shape[1]))

        def on_optimizer_step(self, state: Any) -> None:
            if state.step > warmup:
                self.targets += state.num_targets  # tokens that carry a loss in this step (host-side count)
            if state.step in (warmup, steps):
                if device == "cuda":
                    torch.cuda.synchronize()
                if state.step == warmup:
                    self.t0 = time.perf_counter()
                else:
                    self.t1 = time.perf_counter()
            if state.step in (1, warmup) or state.step % 10 == 0 or state.step == steps:
                print(f"[{variant}] step {state.step}/{steps} at {time.perf_counter() - self.started:.1f} s",
                      flush=True)

    clock = Clock()
    pre = Preprocessor(max_length=cfg["seq"], pack=not full_rows, clean=[])
    tuner = FineTuner(model, "causal_lm", tokenizer=tok, preprocessor=pre, device=device,
                      precision=cfg["precision"], compile=compiled, max_steps=steps, batch_size=cfg["batch"],
                      learning_rate=6e-4, warmup_steps=2, group_by_length=False, log_every=steps, seed=SEED,
                      progress=False, callbacks=[clock])
    t = time.perf_counter()
    history = tuner.fit(records)
    wall = time.perf_counter() - t
    elapsed = clock.t1 - clock.t0
    stats = pre.stats.get("train")
    result.update(
        wall_s=wall, timed_s=elapsed, timed_steps=steps - warmup, tokens_per_s=clock.positions / elapsed,
        target_tokens_per_s=clock.targets / elapsed,
        flops_per_s=clock.flops / elapsed, step_ms=1000 * elapsed / (steps - warmup), n_params=n_params,
        flops_per_token=flops_per_token(n_params, cfg["n_layer"], cfg["n_head"], head_dim, cfg["seq"]),
        row_lengths=sorted(clock.lengths), precision=tuner.precision.name, compile=compiled,
        packing_efficiency=getattr(stats, "packing_efficiency", None), rows=getattr(stats, "packed_rows", None),
        loss_last=next((h["train/loss"] for h in reversed(history) if "train/loss" in h), None),
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
    )
    if device == "cuda":
        result.update(device_name=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                      max_memory_gb=torch.cuda.max_memory_allocated() / 2**30)
    else:
        result.update(device_name=f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)")
    return result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


# ---- orchestration ------------------------------------------------------------------------------------
def run_subprocess(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One variant in a fresh process; its progress lines are relayed as they come."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("["):  # progress
            print(line, end="", flush=True)
    proc.wait()
    watchdog.cancel()
    results = [x for x in lines if x.startswith(RESULT_PREFIX)]
    if proc.returncode or not results:
        return {"variant": cfg["variant"], "error": f"exit {proc.returncode}: " + "\n".join(lines[-30:])}
    return json.loads(results[-1][len(RESULT_PREFIX):])


def summarize(results: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat JSON object: per variant tokens/s and MFU against both peaks, plus the setup."""
    quick = cfg["quick"]
    base = "quick_mfu_gpt2_tiny_128" if quick else "gpu_mfu_gpt2_124m_1024"
    good = [r for r in results if "error" not in r]
    name = good[0]["device_name"] if good else ""
    peak, source = (None, "quick mode: measured fp32 peak only") if quick else table_peak(name)
    measured = max((r["peak_measured_flops"] for r in good), default=None)
    out: dict[str, Any] = {"device_name": name, "peak_table_flops": peak, "peak_table_source": source,
                           "peak_measured_flops": measured,
                           "peak_measured_what": good[0]["peak_measured_what"] if good else None,
                           "batch_rows": cfg["batch"], "seq": cfg["seq"], "steps": cfg["steps"],
                           "warmup_steps": cfg["warmup"], "flops_formula": "6N + 12*L*H*Q*T (PaLM; N as nanoGPT)"}
    for r in results:
        key = base + ("" if r["variant"] == "eager" else "_" + r["variant"])
        if "error" in r:
            out[key + "_error"] = r["error"][-2000:]
            continue
        out[key] = r["flops_per_s"] / peak if peak else None
        out[key + "_vs_measured_peak"] = r["flops_per_s"] / measured if measured else None
        for field in ("tokens_per_s", "target_tokens_per_s", "flops_per_s", "step_ms", "wall_s", "loss_last", "max_memory_gb",
                      "packing_efficiency", "row_lengths"):
            if field in r:
                out[f"{key}_{field}"] = r[field]
        for field in ("n_params", "flops_per_token", "precision", "torch", "transformers", "python", "cuda"):
            if field in r:
                out[field] = r[field]
    return out


def table(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    peak, measured = summary["peak_table_flops"], summary["peak_measured_flops"]
    rows = ["| variant | tokens/s | step ms | TFLOP/s | MFU (datasheet peak) | MFU (measured peak) | loss at end |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['variant']} | failed: {r['error'].splitlines()[-1][:80] if r['error'] else ''} |||||")
            continue
        mfu = f"{r['flops_per_s'] / peak:.1%}" if peak else "-"
        mfu_measured = f"{r['flops_per_s'] / measured:.1%}" if measured else "-"
        loss = f"{r['loss_last']:.3f}" if r.get("loss_last") is not None else "-"
        rows.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['flops_per_s'] / 1e12:.2f} "
                    f"| {mfu} | {mfu_measured} | {loss} |")
    peak_text = f"datasheet peak {peak / 1e12:.1f} TFLOP/s" if peak else f"datasheet peak: {summary['peak_table_source']}"
    rows.append("")
    rows.append(f"{summary['device_name']}; {peak_text}; measured peak {(measured or 0) / 1e12:.2f} TFLOP/s "
                f"({summary['peak_measured_what']}); {summary['batch_rows']} rows x {summary['seq']} tokens per step, "
                f"{summary['steps'] - summary['warmup_steps']} of {summary['steps']} steps timed.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny GPT-2, 128 tokens, fp32")
    parser.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} "
                        f"(default: {','.join(DEFAULT_VARIANTS)}; quick: eager,compiled)")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant (default 30; quick 6)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 10; quick 2)")
    parser.add_argument("--batch", type=int, help="rows per step (default 16; quick 4)")
    parser.add_argument("--budget-s", type=float, default=330, help="start no variant after this many seconds")
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/gpu_mfu.json, quick: *_quick.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.worker:
        emit(run_variant(json.loads(ns.worker)))
        return {}
    cfg = dict(QUICK if ns.quick else FULL, quick=ns.quick)
    for name in ("steps", "warmup", "batch"):
        if getattr(ns, name):
            cfg[name] = getattr(ns, name)
    if not 0 < cfg["warmup"] < cfg["steps"]:
        parser.error("--warmup must be at least 1 and less than --steps.")
    variants = ns.variants.split(",") if ns.variants else (["eager", "compiled"] if ns.quick else list(DEFAULT_VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")
    if not ns.quick:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu_mfu.py needs a CUDA GPU; run it with --quick for a CPU smoke run.")
    out = ns.out or BENCH / ("gpu_mfu_quick.json" if ns.quick else "gpu_mfu.json")
    start, results = time.monotonic(), []
    for variant in variants:
        left = ns.budget_s - (time.monotonic() - start)
        if left <= 0:
            print(f"[{variant}] skipped: the time budget ({ns.budget_s:.0f} s) is spent", flush=True)
            results.append({"variant": variant, "error": "skipped: time budget spent"})
            continue
        print(f"[{variant}] starting ({left:.0f} s of the budget left)", flush=True)
        results.append(run_subprocess({**cfg, "variant": variant}, timeout=max(left, 60.0)))
        summary = summarize(results, cfg)
        out.write_text(json.dumps(summary, indent=1) + "\n")  # after every variant
    summary = summarize(results, cfg)
    print(table(results, summary), flush=True)
    print(f"wrote {out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
