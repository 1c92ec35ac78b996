"""glibc malloc reuse (opt-in): fewer page faults inside the block, glibc's defaults and the memory
given back after it, nested blocks, the switches."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from finetune_lib import FineTuner
from finetune_lib.speedups import malloc

from ..training.helpers import classification_records, model_and_tokenizer

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="memory reuse is a glibc malloc setting")

# In a fresh process (the settings are process-wide): page faults of a step-like pattern (six 8 MiB
# tensors made and freed together) under glibc's start-up settings (128 KiB mmap and trim thresholds,
# pinned: its dynamic threshold makes the default run-dependent), inside reuse_freed_memory(), and
# after it; and the resident memory before the block, at its end and right after it.
_FAULTS = """
import ctypes, resource, torch
from finetune_lib.speedups.malloc import reuse_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 128 * 1024)
libc.mallopt(-1, 128 * 1024)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        xs = [torch.ones(2 << 20) for _ in range(6)]
        del xs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
faults()
default = faults()
before = resident_mib()
with reuse_freed_memory() as applied:
    faults()  # the heap grows once
    reused = faults()
    held = resident_mib()
left = resident_mib()
after = faults()
print(default, applied, reused, after, held - before, left - before)
"""


@glibc
def test_reuse_removes_the_page_faults_inside_the_block_only_and_gives_the_memory_back():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout.split()
    default, applied, reused, after = int(out[0]), out[1] == "True", int(out[2]), int(out[3])
    held, left = float(out[4]), float(out[5])
    assert applied
    assert default > 10_000  # 48 MiB freed 5 times: every page faulted in again
    assert reused < default * 0.05
    assert held > 40  # inside the block the freed 48 MiB stay resident ...
    assert left < 4  # ... and go back to the kernel when it ends (malloc_trim)
    assert after >= 6 * 2048  # so the next 48 MiB are faulted in again (more, as the heap's layout allows)


@pytest.fixture
def spy(libc_spy):
    return libc_spy


def _settings(values: dict[int, int]) -> list[tuple[str, int, int]]:
    return [("mallopt", p, v) for p, v in values.items()]


def test_nested_blocks_set_once_and_restore_once(spy):
    with malloc.reuse_freed_memory() as outer:
        with malloc.reuse_freed_memory() as inner:
            assert outer and inner
        assert spy.calls == _settings(malloc.SETTINGS)  # the inner block's end restores nothing
    assert spy.calls == _settings(malloc.SETTINGS) + _settings(malloc.DEFAULTS) + [("malloc_trim", 0, 0)]
    assert malloc.DEFAULTS == {malloc.M_MMAP_THRESHOLD: 128 << 10, malloc.M_TRIM_THRESHOLD: 128 << 10,
                               malloc.M_TOP_PAD: 128 << 10}


def test_restored_when_the_block_raises_and_nothing_when_disabled(spy):
    with pytest.raises(RuntimeError), malloc.reuse_freed_memory():
        raise RuntimeError("boom")
    assert spy.calls[-1] == ("malloc_trim", 0, 0)
    spy.calls.clear()
    with malloc.reuse_freed_memory(enabled=False) as applied:
        assert not applied
    assert spy.calls == []


@glibc
def test_the_environment_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("FINETUNE_LIB_MALLOC", "system")
    assert malloc.glibc() is None
    with malloc.reuse_freed_memory() as applied:
        assert not applied


@pytest.mark.parametrize("speedups", [True, False])
def test_fit_evaluate_and_predict_scope_it_only_with_cpu_speedups(spy, speedups):
    model, tok = model_and_tokenizer("bert", "classification")
    records = classification_records(16)
    tuner = FineTuner(model, "classification", tokenizer=tok, epochs=1, batch_size=8, progress=False,
                      loggers=(), cpu_speedups=speedups)
    tuner.fit(records)
    tuner.evaluate(records)
    tuner.predict(["a text"])
    one = _settings(malloc.SETTINGS) + _settings(malloc.DEFAULTS) + [("malloc_trim", 0, 0)]
    assert spy.calls == (one * 3 if speedups else [])  # set on entering, restored on leaving, each time


def test_a_non_boolean_is_refused_before_any_work():
    with pytest.raises(ValueError, match="cpu_speedups must be True or False"):
        FineTuner("unused", cpu_speedups="yes")


@pytest.mark.parametrize("old", ["cpu_memory_reuse", "cpu_fast_dropout"])
def test_the_old_settings_say_where_they_went(old):
    with pytest.raises(TypeError, match=rf"(?s){old}.*cpu_speedups=True") as error:
        FineTuner("unused", **{old: False})
    if old == "cpu_memory_reuse":
        assert "frozen-weight bf16 casts are now always on" in str(error.value)
