"""bench/gpu_chat.py (workload 5 on a GPU: bf16 LoRA and QLoRA): its --quick CPU mode end to end, and
its refusal to run the real thing without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_quick_mode_trains_saves_and_reloads_the_adapter(tmp_path):
    out = tmp_path / "chat.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_chat.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["variants"]["bf16_lora"]
    assert "skipped" not in result, result.get("skipped")
    assert result["device"] == "cpu" and result["trainable_params"] > 0
    assert result["s_per_step"] > 0 and result["target_tokens_per_s"] > 0
    assert result["reload_max_abs_diff"] < 1e-4  # the saved adapter folder gives the trained model's logits
    assert isinstance(result["sample_answer"], str)


def test_without_cuda_the_real_run_refuses():
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_chat.py")], capture_output=True, text=True,
                          timeout=120, env={**ENV, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
