"""One process of the 2-process cache test: encodes the same Arrow data into a shared tokenization cache
and writes how many times its tokenizer ran and what it got (rank 0 fills the cache, rank 1 reads it)."""

import json
import sys

import datasets
import torch
import torch.distributed as dist

from finetune_lib import Preprocessor
from finetune_lib.testing import tiny_tokenizer
from tests.training.helpers import classification_records


def main(cache: str, out: str) -> None:
    dist.init_process_group("gloo")
    tok = tiny_tokenizer()
    calls = {"n": 0}
    original = type(tok).__call__

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    type(tok).__call__ = counting
    records = classification_records(64)
    pre = Preprocessor(max_length=32, cache_dir=cache).setup(tok, "classification", records)
    features = pre.encode(datasets.Dataset.from_list(records), "train")
    rows = [features[i] for i in range(len(features))]  # dicts of ints and lists of ints
    with open(f"{out}.{dist.get_rank()}.json", "w") as f:
        json.dump({"tokenizer_calls": calls["n"], "rows": rows}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
