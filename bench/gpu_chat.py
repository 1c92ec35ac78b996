"""Workload 5's GPU paths: SmolLM2-135M-Instruct with LoRA in bf16, and QLoRA (4-bit base), on CUDA.

    python bench/gpu_chat.py                 # CUDA: bf16 LoRA, then QLoRA (needs bitsandbytes), ~2-3 min
    python bench/gpu_chat.py --quick         # CPU smoke run: a tiny Llama, fp32, LoRA only, seconds

Each variant trains `FineTuner(task="causal_lm", adapter=LoRA(r=16, alpha=32, dropout=0.05))` on the
demo's generated support conversations (`finetune_lib.demo.chat_data`, loss on the last assistant
turn, max length 256) at the library's defaults on the device (`precision="auto"`: bf16 on a GPU
that has it; fused AdamW and the device-side non-finite guard on CUDA), then checks what a user would:

- the loss is finite and falls (the mean of the last 5 steps against the first 5);
- `save(path)` writes an adapter folder that `peft.AutoPeftModelForCausalLM` loads, and its logits
  on a held-out prompt equal the trained model's (bf16: to 2e-2; QLoRA reloads the base in 4-bit);
- one greedy answer to a held-out question (printed, for the record).

Results go to `bench/gpu_chat.json` (`bench/gpu_chat_quick.json` in quick mode, or `--out`): per variant the
precision used, seconds per step (the device synchronized at the end of the warm-up and the last
step), target tokens per second, peak device memory (`torch.cuda.max_memory_allocated`), trainable
parameters, the first and last losses and the reload difference. A variant that cannot run (no
bitsandbytes, say) is recorded with its reason instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def _model_source(quick: bool) -> tuple[str, Any]:
    """A folder of plain weights (QLoRA quantizes while loading, so it needs one) and its tokenizer."""
    if quick:
        from finetune_lib.testing import tiny_chat_tokenizer, tiny_model

        folder = Path(tempfile.mkdtemp(prefix="gpu_chat_")) / "tiny"
        tok = tiny_chat_tokenizer()
        tiny_model("llama", "causal_lm", vocab_size=len(tok), max_position_embeddings=512).save_pretrained(folder)
        tok.save_pretrained(folder)
        return str(folder), None
    from chat_common import plain_smollm2

    return str(plain_smollm2()), None


class _Clock:
    """Synchronizes the device at the end of step `warmup` and of the last step; counts target tokens."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.marks, self.targets = warmup, {}, 0

    def on_batch_start(self, state: Any) -> None:
        if state.step >= self.warmup:
            self.targets += int((state.batch["labels"][:, 1:] != -100).sum())

    def on_optimizer_step(self, state: Any) -> None:
        if state.step == self.warmup or state.step == state.max_steps:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks[state.step] = time.perf_counter()


def run_variant(name: str, quick: bool, steps: int, warmup: int) -> dict[str, Any]:
    from finetune_lib import Callback, FineTuner, Preprocessor
    from finetune_lib.adapters import LoRA
    from finetune_lib.demo.chat_data import support_conversations

    source, tokenizer = _model_source(quick)
    train, test = support_conversations(96 if quick else 240, 4, seed=0)
    clock = _Clock(warmup)
    hooks = type("Hooks", (Callback,), {"on_batch_start": lambda s, st: clock.on_batch_start(st),
                                        "on_optimizer_step": lambda s, st: clock.on_optimizer_step(st)})()
    lora = LoRA(r=16, alpha=32, dropout=0.05, quantize="4bit" if name == "qlora" else None)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tuner = FineTuner(source, task="causal_lm", tokenizer=tokenizer, adapter=lora,
                      preprocessor=Preprocessor(clean=[], max_length=512 if quick else 256, train_on="last_assistant"),
                      max_steps=steps, batch_size=16, learning_rate=2e-4, warmup_steps=2, log_every=1, seed=0,
                      progress=False, loggers=(), callbacks=[hooks])
    tuner.fit([{"messages": r["messages"]} for r in train])
    losses = [r["train/loss"] for r in tuner.history if "train/loss" in r]
    seconds = (clock.marks[steps] - clock.marks[warmup]) / max(1, steps - warmup)
    out: dict[str, Any] = {
        "variant": name, "device": str(tuner.device), "precision": str(getattr(tuner.precision, "name", tuner.precision)),
        "s_per_step": seconds, "target_tokens_per_s": clock.targets / max(1e-9, seconds * (steps - warmup)),
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "trainable_params": sum(p.numel() for p in tuner.model.parameters() if p.requires_grad),
        "loss_first5": sum(losses[:5]) / len(losses[:5]), "loss_last5": sum(losses[-5:]) / len(losses[-5:]),
    }
    out["finite_and_falling"] = all(x == x and abs(x) != float("inf") for x in losses) \
        and out["loss_last5"] < out["loss_first5"]
    out.update(_reload_check(tuner, test[0]["messages"][:-1]))
    return out


def _reload_check(tuner: Any, prompt: list[dict[str, str]]) -> dict[str, Any]:
    from peft import AutoPeftModelForCausalLM

    tok = tuner.tokenizer
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"].to(tuner.device)
    with tempfile.TemporaryDirectory() as folder:
        tuner.save(folder)
        options = getattr(tuner, "_model_setup", None)
        kwargs = options.load_options if options is not None else {}
        loaded = AutoPeftModelForCausalLM.from_pretrained(folder, **kwargs).to(tuner.device)
        loaded.eval()
        tuner.model.eval()
        with torch.no_grad():
            a = tuner.model(input_ids=ids).logits.float()
            b = loaded(input_ids=ids).logits.float()
    answer = tuner.predict([prompt], max_new_tokens=40)[0]
    return {"reload_max_abs_diff": float((a - b).abs().max()), "sample_answer": answer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on a tiny Llama")
    parser.add_argument("--variants", default="bf16_lora,qlora")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default bench/gpu_chat[_quick].json)")
    args = parser.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        print("bench/gpu_chat.py needs a CUDA GPU (or --quick for the CPU smoke run).", file=sys.stderr)
        return 2
    steps = args.steps or (6 if args.quick else 40)
    variants = ["bf16_lora"] if args.quick else args.variants.split(",")
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                               "torch": torch.__version__, "variants": {}}
    path = args.out or BENCH / ("gpu_chat_quick.json" if args.quick else "gpu_chat.json")
    for name in variants:
        try:
            results["variants"][name] = run_variant(name, args.quick, steps, warmup=2)
        except (ImportError, ValueError) as error:  # e.g. bitsandbytes missing: recorded, not fatal
            results["variants"][name] = {"variant": name, "skipped": f"{type(error).__name__}: {error}"}
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["variants"][name]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
