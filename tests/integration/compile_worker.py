"""One process of the 2-process DDP test of compile=True: rank 0 writes the losses and weights."""

import sys

import torch

from finetune_lib.testing import tiny_tokenizer
from tests.training.test_compile import fixed_length_records, make

if __name__ == "__main__":
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    tuner = make(tok, True)
    tuner.fit(fixed_length_records(tok))
    if torch.distributed.get_rank() == 0:
        torch.save({"losses": [r["train/loss"] for r in tuner.history if "train/loss" in r],
                    "wrapped": type(tuner._train_model.module).__name__,
                    "weights": tuner.model.state_dict()}, sys.argv[1] + ".pt")
