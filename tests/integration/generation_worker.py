"""One process of the 2-process generation test: evaluates a tiny chat model with BLEU (and its base
model beside it); rank 0 writes the results and the generations."""

import json
import sys

import torch

from finetune_lib import FineTuner, MetricSuite
from finetune_lib.metrics import BLEU, Perplexity
from tests.training.test_generation import chat_llama, conversations


def run(output_dir: str | None = None) -> tuple[dict, list[dict]]:
    model, tok = chat_llama(seed=3)
    tuner = FineTuner(model, "causal_lm", tokenizer=tok, metrics=MetricSuite([Perplexity(), BLEU()]), max_steps=2,
                      batch_size=4, learning_rate=5e-3, eval_batch_size=2, max_new_tokens=5, progress=False,
                      precision="fp32", loggers=(), output_dir=output_dir)
    tuner.fit(conversations(8))
    results = tuner.evaluate(conversations(7), baseline=True)
    return results, tuner.last_artifacts["generations"]


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, output_dir = sys.argv[1], sys.argv[2]
    results, rows = run(output_dir)
    if torch.distributed.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"results": results, "rows": rows}, f)
