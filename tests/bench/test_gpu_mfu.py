"""bench/gpu_mfu.py: the FLOPs formula against a hand computation for GPT-2-124M, the peak table, and
the --quick CPU mode end to end (eager, packed and full rows: the compiled path is tests/training/test_compile.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_mfu  # noqa: E402


def test_flops_per_token_of_gpt2_124m_by_hand():
    with torch.device("meta"):  # shapes only: nothing allocated
        model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257))
    d, layers = 768, 12
    block = (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (2 * d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    by_hand = 50257 * d + layers * block + 2 * d  # token embedding (tied to the LM head), blocks, final norm
    assert by_hand == 123_653_376  # nanoGPT's "number of parameters: 123.65M" (no position embeddings)
    assert gpu_mfu.counted_params(model) == by_hand
    assert gpu_mfu.flops_per_token(by_hand, 12, 12, 64, 1024) == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 1024
    assert gpu_mfu.flops_per_token(by_hand, 12, 12, 64, 1024) == 855_166_464


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA GeForce RTX 4090", None),
])
def test_datasheet_peaks(name, peak):
    assert gpu_mfu.table_peak(name)[0] == peak


def test_quick_mode_end_to_end(tmp_path):
    out = tmp_path / "mfu.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_mfu.py"), "--quick", "--variants", "eager,eager_full_rows",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| eager |" in proc.stdout and "| eager_full_rows |" in proc.stdout  # the Markdown table
    result = json.loads(out.read_text())
    for key in ("quick_mfu_gpt2_tiny_128", "quick_mfu_gpt2_tiny_128_eager_full_rows"):
        assert f"{key}_error" not in result, result.get(f"{key}_error")
        assert 0 < result[f"{key}_vs_measured_peak"] < 1.5
        assert result[f"{key}_tokens_per_s"] > 0
        assert result[f"{key}_row_lengths"] == [128]  # full rows: every timed batch is 4 x 128
    assert result["peak_measured_flops"] > 0 and result["precision"] == "fp32"
    assert result["quick_mfu_gpt2_tiny_128_packing_efficiency"] > 0.9
