"""Shared pieces of the benchmark: data, the split, timing, memory, FLOP counting.

Nothing here imports finetune_lib, so the Trainer and hand-loop workers measure only themselves.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DATA_FILE = (REPO / ".." / "shared" / "data" / "amazon_cells_labelled.txt").resolve()
RESULT_PREFIX = "BENCH_RESULT "

SEED = 0
EPOCHS = 4
BATCH = 16
LR = 5e-5
MAX_LENGTH = 128
LOSS_K = 10  # the loss compared across runners: mean training loss over the first K optimizer steps


# ---- data ------------------------------------------------------------------------------------------
def gpt2(vocab: int, layers: int, hidden: int, heads: int, positions: int, tokenizer: Any) -> Any:
    """A GPT-2 from a config (nothing downloaded), seeded, with the tokenizer's special token ids."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_layer=layers, n_embd=hidden, n_head=heads, n_positions=positions,
                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(SEED)
    return GPT2LMHeadModel(cfg)


def load_amazon(path: Path = DATA_FILE) -> list[dict[str, Any]]:
    """`sentence<TAB>label` lines; lines without a tab (the stray `Review` header) are skipped."""
    if not path.exists():
        raise SystemExit(f"The benchmark data is missing: {path} (expected next to the repository, "
                         "in ../shared/data/).")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text, tab, label = line.rpartition("\t")
        if not tab or not label.strip().isdigit():
            continue
        records.append({"text": text.strip(), "label": int(label)})
    return records


def amazon_split(quick: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """80/20 stratified split with seed 0 (scikit-learn); quick mode keeps a stratified 10% of the
    training split (80 examples) and 25% of the test split (50)."""
    from sklearn.model_selection import train_test_split

    records = load_amazon()
    labels = [r["label"] for r in records]
    train, test = train_test_split(records, test_size=0.2, stratify=labels, random_state=SEED)
    if quick:
        train, _ = train_test_split(train, train_size=0.1, stratify=[r["label"] for r in train], random_state=SEED)
        test, _ = train_test_split(test, train_size=0.25, stratify=[r["label"] for r in test], random_state=SEED)
    return train, test


_WORDS = ("the phone battery screen case charger works great poor quality sound headset bluetooth signal "
          "price order shipping return fast slow broke after days love recommend would not buy again "
          "customer service support reply clear loud volume button camera picture fits well cheap").split()


def lm_records(n: int, seed: int, prompt_words: tuple[int, int] = (2, 12),
               target_words: tuple[int, int] = (2, 60)) -> list[dict[str, str]]:
    """Generated prompt/target records with widely varying target lengths (what packing is for)."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))

    return [{"prompt": words(*prompt_words) + ":", "target": " " + words(*target_words)} for _ in range(n)]


def seed_all(seed: int = SEED) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- measuring -------------------------------------------------------------------------------------
def best_matmul_seconds(n: int, dtype: Any, reps: int, device: str = "cpu", warmup: int = 1) -> float:
    """The fastest of `reps` timed n x n products (after `warmup` untimed ones), synchronized on CUDA."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class EpochClock:
    """Wall time of each epoch (start/end marks from whichever loop is being measured)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.times: list[float] = []

    def start(self) -> None:
        self.starts.append(time.perf_counter())

    def end(self) -> None:
        self.times.append(time.perf_counter() - self.starts[-1])


def emit(result: dict[str, Any]) -> None:
    """The worker's one result line (the orchestrator reads the last line with the prefix)."""
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def set_threads() -> int:
    """Use every core (torch's default), recorded for the report."""
    import torch

    n = int(os.environ.get("BENCH_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch.get_num_threads()


def native_bf16() -> bool:
    """True where bf16 autocast is fast: a CUDA GPU, or a CPU with AVX-512 BF16 / AMX (emulated bf16 is
    slower than fp32). BENCH_BF16=0/1 overrides. The tuned Trainer and the hand loop use bf16 exactly
    where finetune_lib's precision="auto" does, so all three do the same math."""
    import torch

    if os.environ.get("BENCH_BF16") in ("0", "1"):
        return os.environ["BENCH_BF16"] == "1"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---- FLOPs -----------------------------------------------------------------------------------------
def matmul_flops_per_token(model: Any) -> dict[str, float]:
    """Matmul FLOPs per token of forward and backward, from the model's Linear-like weights.

    Formula (documented in BENCHMARKS.md): a weight matrix with P entries costs 2P FLOPs per token
    forward; backward costs 2P for the gradient with respect to its input (needed whenever anything
    below it trains) plus 2P for the gradient of the weight itself (only when it trains). Token
    embeddings are lookups (0 FLOPs) unless tied to an output projection, which is counted. Attention
    score/value products (4 * layers * seq * d per token forward) are left out: at these sequence
    lengths they are a few percent.
    """
    import torch

    weights: list[tuple[int, torch.nn.Parameter]] = []
    order = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.ndim != 2 or isinstance(module, torch.nn.Embedding):
                continue
            if "bias" in name:
                continue
            weights.append((order, p))
            order += 1
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_w = getattr(head, "weight", None)
    if head_w is not None and all(p is not head_w for _, p in weights):
        weights.append((order, head_w))  # a tied LM head: a real matmul per token
    trainable_idx = [i for i, p in weights if p.requires_grad]
    lowest = min(trainable_idx) if trainable_idx else len(weights)
    fwd = sum(2 * p.numel() for _, p in weights)
    bwd = 0
    for i, p in weights:
        if p.requires_grad:
            bwd += 4 * p.numel()
        elif i > lowest:
            bwd += 2 * p.numel()
    return {"forward": float(fwd), "backward": float(bwd), "train": float(fwd + bwd)}


def lm_features(tokenizer: Any, records: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """prompt + target + EOS with the prompt masked out of the loss (what a Trainer user writes)."""
    out = []
    for r in records:
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        t = tokenizer(r["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + t)[:max_length]
        labels = ([-100] * len(p) + t)[:max_length]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out
