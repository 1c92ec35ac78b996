"""One benchmark configuration in a fresh process: `python bench/worker.py '<json config>'`.

Prints one line `BENCH_RESULT {...}` with the measurements (peak RSS of this process included).
Config keys: workload (cls_full, cls_last2, causal, eval, peak), runner, quick, and for eval `n`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SEED, best_matmul_seconds, emit, gpt2, lm_features, lm_records, set_threads  # noqa: E402

CAUSAL = {"layers": 6, "hidden": 256, "heads": 4, "vocab": 2000, "max_length": 128, "train": 1200, "quick_train": 100,
          "epochs": 1}
EVAL = {"layers": 2, "hidden": 128, "heads": 2, "vocab": 30000, "max_length": 64}


def peak() -> dict[str, Any]:
    """Matmul peak of this machine in fp32 and bf16: best of a few timed n^3 products. bf16 is measured at
    the fp32 size where the CPU has native bf16 units (AVX-512 BF16/AMX), smaller where it is emulated
    (about 200x slower than fp32 there)."""
    import torch
    from common import native_bf16

    bf16_n, bf16_reps = (2048, 6) if native_bf16() else (512, 2)
    out: dict[str, Any] = {}
    for name, dtype, reps, n in (("fp32", torch.float32, 6, 2048), ("bf16", torch.bfloat16, bf16_reps, bf16_n)):
        out[f"{name}_gflops"] = 2 * n**3 / best_matmul_seconds(n, dtype, reps) / 1e9
        out[f"{name}_size"] = n
    return out


def causal(cfg: dict[str, Any]) -> dict[str, Any]:
    from finetune_lib.testing import tiny_tokenizer

    tok = tiny_tokenizer(vocab_size=CAUSAL["vocab"])
    model = gpt2(len(tok), CAUSAL["layers"], CAUSAL["hidden"], CAUSAL["heads"], CAUSAL["max_length"], tok)
    train = lm_records(CAUSAL["quick_train"] if cfg["quick"] else CAUSAL["train"], seed=SEED)
    feats = lm_features(tok, train, CAUSAL["max_length"])
    target_tokens = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats)
    tokens = sum(len(f["input_ids"]) for f in feats)
    import runner_ours

    res = runner_ours.causal(cfg, model, tok, train, CAUSAL["epochs"])
    res.update(train_examples=len(train), epochs=CAUSAL["epochs"], tokens_per_epoch=tokens,
               target_tokens_per_epoch=target_tokens)
    return res


def evaluation(cfg: dict[str, Any]) -> dict[str, Any]:
    from finetune_lib.testing import tiny_tokenizer

    tok = tiny_tokenizer(vocab_size=CAUSAL["vocab"])  # ids < 2000 in a 30k-row vocabulary
    model = gpt2(EVAL["vocab"], EVAL["layers"], EVAL["hidden"], EVAL["heads"], EVAL["max_length"], tok).eval()
    records = lm_records(cfg["n"], seed=SEED + 1, target_words=(2, 40))
    feats = lm_features(tok, records, EVAL["max_length"])
    if cfg["runner"] == "ours":
        import runner_ours as runner
    else:
        import runner_trainer as runner  # type: ignore[no-redef]
    res = runner.evaluation(cfg, model, tok, records, EVAL["max_length"])
    res.update(n=cfg["n"], target_tokens=sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats),
               vocab=EVAL["vocab"])
    return res


def warm_imports() -> None:
    """Import what every runner needs before any clock starts (transformers imports lazily; the first
    `from_pretrained` would otherwise charge a second or two of imports to whichever runner loads first)."""
    import sklearn.metrics  # noqa: F401
    import transformers
    from transformers.models.bert import modeling_bert  # noqa: F401
    from transformers.models.gpt2 import modeling_gpt2  # noqa: F401

    transformers.AutoTokenizer, transformers.AutoModelForSequenceClassification  # noqa: B018


def main() -> None:
    cfg = json.loads(sys.argv[1])
    threads = set_threads()
    warm_imports()
    workload, runner = cfg["workload"], cfg.get("runner")
    if workload == "peak":
        res = peak()
    elif workload in ("cls_full", "cls_last2"):
        module = {"ours": "runner_ours", "ours_random": "runner_ours", "ours_cache": "runner_ours",
                  "ours_speedups": "runner_ours",
                  "trainer_default": "runner_trainer",
                  "trainer_tuned": "runner_trainer", "hand": "runner_hand"}[runner]
        res = __import__(module).classification(cfg)
    elif workload == "chat":
        res = __import__("runner_ours_chat" if runner == "ours" else "runner_trl").chat(cfg)
    elif workload == "causal":
        res = causal(cfg)
    elif workload == "eval":
        res = evaluation(cfg)
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    import torch

    res.update(config=cfg, threads=threads, torch=torch.__version__)
    emit(res)


if __name__ == "__main__":
    main()
