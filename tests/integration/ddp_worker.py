"""One process of the 2-process DDP test: trains a tiny classifier, rank 0 writes the results."""

import json
import sys

import torch

from finetune_lib import FineTuner, LayerFreezer
from tests.training.helpers import classification_records, model_and_tokenizer


def run(out: str | None, output_dir: str | None = None) -> tuple[dict, dict]:
    model, tok = model_and_tokenizer("bert", "classification", dropout=0.0, num_labels=2)
    tuner = FineTuner(model, "classification", tokenizer=tok, epochs=2, batch_size=8, gradient_accumulation=2,
                      learning_rate=2e-3, log_every=1, progress=False, freezer=LayerFreezer(train_last=2),
                      output_dir=output_dir, group_by_length=True, precision="fp32")  # compared at fp32 tolerances
    data = classification_records(64)
    tuner.fit(data[:48], data[48:])
    results = tuner.evaluate(data[48:])
    weights = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    return results, weights


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, output_dir = sys.argv[1], sys.argv[2]
    results, weights = run(out, output_dir)
    if torch.distributed.get_rank() == 0:
        torch.save(weights, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump(results, f)
