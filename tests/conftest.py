import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# torch.compile tests (tests/training/test_compile.py): TorchInductor compiles the kernels of a tiny
# model in this process instead of starting a pool of compile workers (about half the cold-cache time
# of the 2-process DDP test on 2 cores); inherited by the test's subprocesses
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models run fastest on one thread; with two, each step pays thread hand-offs (and on a
# loaded machine, oversubscription made tiny steps up to 100x slower).
torch.set_num_threads(1)


class SpyLibc:
    """Stands in for glibc in `finetune_lib.speedups.malloc`: records mallopt and malloc_trim calls as
    ("mallopt", param, value) and ("malloc_trim", pad, 0) instead of making them."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad, 0))
        return 1


@pytest.fixture
def libc_spy(monkeypatch) -> SpyLibc:
    """glibc replaced by a `SpyLibc` for the speedups' malloc tuning."""
    from finetune_lib.speedups import malloc

    spy = SpyLibc()
    monkeypatch.setattr(malloc, "glibc", lambda: spy)
    return spy
