import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# Tiny models run fastest on one thread; with two, each step pays thread hand-offs (and on a
# loaded machine, oversubscription made tiny steps up to 100x slower).
torch.set_num_threads(1)
