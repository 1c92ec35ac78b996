"""CPU memory reuse (glibc mallopt): fewer page faults, opt-out honoured, bad values refused."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from finetune_lib import FineTuner
from finetune_lib.training import finetuner as finetuner_module
from finetune_lib.training import memory

from .helpers import classification_records, model_and_tokenizer

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="memory reuse is a glibc malloc setting")

# In a fresh process (the settings are process-wide): page faults of a step-like pattern (six 8 MiB
# tensors made and freed together) under glibc's start-up settings (128 KiB mmap and trim thresholds,
# pinned: its dynamic threshold makes the default run-dependent), then after reuse_cpu_memory().
_FAULTS = """
import ctypes, resource, sys, torch
from finetune_lib.training.memory import reuse_cpu_memory
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 128 * 1024)
libc.mallopt(-1, 128 * 1024)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        xs = [torch.ones(2 << 20) for _ in range(6)]
        del xs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
default = faults()
applied = reuse_cpu_memory()
faults()  # the heap grows once
print(default, applied, faults())
"""


@glibc
def test_reuse_removes_the_page_faults_of_repeated_allocations():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout.split()
    default, applied, reused = int(out[0]), out[1] == "True", int(out[2])
    assert applied
    assert default > 10_000  # 48 MiB freed 5 times: every page faulted in again
    assert reused < default * 0.05


@glibc
def test_the_environment_switch_turns_it_off():
    code = "from finetune_lib.training.memory import reuse_cpu_memory; print(reuse_cpu_memory())"
    env = {"FINETUNE_LIB_MALLOC": "system", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


@glibc
def test_idempotent(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)
    assert memory.reuse_cpu_memory() is True
    assert memory.reuse_cpu_memory() is True


@pytest.mark.parametrize("setting, calls", [(True, 2), (False, 0)])
def test_fit_and_evaluate_apply_it_only_when_asked(monkeypatch, setting, calls):
    seen = []
    monkeypatch.setattr(finetuner_module, "reuse_cpu_memory", lambda: seen.append(1))
    model, tok = model_and_tokenizer("bert", "classification")
    records = classification_records(16)
    tuner = FineTuner(model, "classification", tokenizer=tok, epochs=1, batch_size=8, progress=False,
                      loggers=(), cpu_memory_reuse=setting)
    tuner.fit(records)
    tuner.evaluate(records)
    assert len(seen) == calls


def test_a_non_boolean_is_refused_before_any_work():
    with pytest.raises(ValueError, match="cpu_memory_reuse must be True or False"):
        FineTuner("unused", cpu_memory_reuse="yes")
