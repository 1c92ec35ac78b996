"""One process of the 2-process streaming test: trains a tiny classifier on a JSON Lines stream; writes the
weights (rank 0) and the example ids this process trained on (every rank)."""

import json
import sys

import datasets
import torch

from finetune_lib import FineTuner
from finetune_lib.data.streaming import StreamingRecords
from finetune_lib.events import Callback
from tests.training.helpers import model_and_tokenizer


class SeenIds(Callback):
    def __init__(self):
        self.ids: list[int] = []

    def on_batch_start(self, state):
        self.ids.extend(int(i) for i in state.example_ids)


def run(path: str) -> tuple[dict, list[int]]:
    model, tok = model_and_tokenizer("bert", "classification", dropout=0.0, num_labels=2)
    seen = SeenIds()
    tuner = FineTuner(model, "classification", tokenizer=tok, max_steps=8, batch_size=8, gradient_accumulation=2,
                      learning_rate=2e-3, log_every=1, progress=False, precision="fp32", callbacks=[seen])
    stream = StreamingRecords(datasets.load_dataset("json", data_files=path, split="train", streaming=True),
                              buffer_size=16)
    tuner.fit(stream)
    return {k: v.clone() for k, v in tuner.model.state_dict().items()}, seen.ids


if __name__ == "__main__":
    torch.set_num_threads(1)
    path, out = sys.argv[1], sys.argv[2]
    weights, ids = run(path)
    rank = torch.distributed.get_rank()
    if rank == 0:
        torch.save(weights, out + ".pt")
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(ids, f)
