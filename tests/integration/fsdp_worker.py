"""One process of the 2-process FSDP test: trains a tiny classifier with distributed="fsdp", saves
it, predicts, then resumes a second run from a given checkpoint; rank 0 writes the results.

Run by `test_fsdp.py` with torch.distributed's environment variables set; `run(...)` is also the
single-process reference (the same settings, one process, the same effective batch)."""

import json
import sys
from pathlib import Path

import torch

from finetune_lib import FineTuner, LayerFreezer
from tests.training.helpers import classification_records, model_and_tokenizer

# small enough that clipping changes about half of the updates: a norm over one shard would show
MAX_GRAD_NORM = 0.5


def make_tuner(output_dir: str | None) -> FineTuner:
    model, tok = model_and_tokenizer("bert", "classification", dropout=0.0, num_labels=2)
    return FineTuner(model, "classification", tokenizer=tok, epochs=3, batch_size=8, gradient_accumulation=2,
                     learning_rate=1e-3, log_every=1, progress=False, freezer=LayerFreezer(train_last=2),
                     max_grad_norm=MAX_GRAD_NORM, output_dir=output_dir, group_by_length=True,
                     eval_batch_size=4,  # 17 validation records: 3 batches on rank 0, 2 on rank 1
                     precision="fp32", distributed="fsdp")  # compared at fp32 tolerances


def data() -> tuple[list[dict], list[dict]]:
    records = classification_records(97)
    return records[:80], records[80:]


def full_weights(tuner: FineTuner) -> dict[str, torch.Tensor]:
    """The full weights (every process takes part under FSDP); only rank 0's copy is complete."""
    gathered = tuner.dist.full_state_dict(tuner.model)
    source = gathered if gathered is not None else tuner.model.state_dict()
    return {k: v.detach().clone().cpu() for k, v in source.items()}


def run(output_dir: str | None = None, resume: str | bool = False) -> tuple[dict, dict, FineTuner]:
    tuner = make_tuner(output_dir)
    train, validation = data()
    tuner.fit(train, validation, resume=resume)
    results = tuner.evaluate(validation)
    return results, full_weights(tuner), tuner


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, resume_from = Path(sys.argv[1]), sys.argv[2]
    results, weights, tuner = run(str(out / "run"))
    tuner.save(out / "final")
    predictions = tuner.predict([r["text"] for r in data()[1]])
    resumed, resumed_weights, _ = run(str(out / "resumed"), resume=resume_from)
    if torch.distributed.get_rank() == 0:
        torch.save({"final": weights, "resumed": resumed_weights}, out / "weights.pt")
        (out / "results.json").write_text(json.dumps({"final": results, "resumed": resumed,
                                                      "predictions": predictions,
                                                      "world_size": torch.distributed.get_world_size()}))
