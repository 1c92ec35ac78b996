import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# torch.compile tests (tests/training/test_compile.py): TorchInductor compiles the kernels of a tiny
# model in this process instead of starting a pool of compile workers (about half the cold-cache time
# of the 2-process DDP test on 2 cores); inherited by the test's subprocesses
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

# Tiny models run fastest on one thread; with two, each step pays thread hand-offs (and on a
# loaded machine, oversubscription made tiny steps up to 100x slower).
torch.set_num_threads(1)
