"""The evaluation loop and predictions: one batch of logits at a time, handed to the MetricSuite."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..data.collate import sequential_batches, to_device
from ..events import CallbackList, TrainState
from ..metrics.batch import EvalBatch
from ..tasks import IGNORE_INDEX, GenerationBudget, generate_texts

log = logging.getLogger(__name__)


@dataclass
class EvalSetup:
    """What evaluation and prediction need of a run, and nothing more.

    Attributes:
        model: the model (unwrapped; FSDP's full weights gathered by the caller).
        task: the task object (`forward`, `aligned`, `aligned_loss_sum`, `count_targets`, `generates`).
        preprocessor: the run's `Preprocessor` (already set up: collate, length, format_prompt, labels).
        tokenizer: the tokenizer (generation decodes with it).
        metrics: the `MetricSuite`.
        device: where batches go.
        autocast: a zero-argument callable returning the mixed-precision context (`Precision.autocast`).
        dist: the `DistributedContext` (sharding and sums over processes).
        batch_size: examples per evaluation batch.
        max_new_tokens: tokens to generate for text metrics and predictions.
        generation_time_budget: seconds of generation allowed in one evaluation (None: no limit).
        seed: the seed of bootstrap confidence intervals.
    """

    model: torch.nn.Module
    task: Any
    preprocessor: Any
    tokenizer: Any
    metrics: Any
    device: torch.device
    autocast: Callable[[], Any]
    dist: Any
    batch_size: int
    max_new_tokens: int
    generation_time_budget: float | None = None
    seed: int = 0


def check_suite(metrics: Any) -> None:
    """Refuse a metric named 'loss' (the key of the evaluation loss)."""
    if "loss" in metrics.names:
        raise ValueError("A metric is named 'loss', which is the key of the evaluation loss FineTuner reports. "
                         "Give it another name, e.g. MyMetric(name='my_loss').")


def evaluate_model(run: EvalSetup, records: list[dict[str, Any]], features: list[dict[str, Any]], *,
                   slices: Any = None, confidence: float | None = None, batch_size: int | None = None,
                   events: CallbackList | None = None, state: TrainState | None = None) -> dict[str, float]:
    """Loss (mean over target tokens or examples, no label smoothing) and the suite's metrics.

    With `generation_time_budget` set and a metric that reads generated text, the results also hold
    ``generated_fraction``: the share of prompts generated before the budget ran out. The prompts
    left get empty outputs, and the text metrics score them as they are: an honest score of what
    was generated over the whole set (the same examples, and slices, as the loss and the other
    metrics), never a score of a subset that flatters (the batches run longest first, so a subset
    would hold only the longest examples). A warning then says how many prompts were generated,
    and the suite's ``last_artifacts["generation"]`` holds the counts.
    """
    model, task, pre = run.model, run.task, run.preprocessor
    size = batch_size or run.batch_size
    has_labels = all("labels" in f for f in features)
    if not has_labels:
        raise ValueError("Evaluation needs labels (classification) or targets (generation) in every record.")
    totals = {"loss": torch.zeros((), dtype=torch.float64, device=run.device), "targets": 0}

    mine = run.dist.shard(range(len(features)))  # each process evaluates a disjoint shard

    def batches() -> Iterator[EvalBatch]:
        for part in sequential_batches(len(mine), size, [pre.length(features[i]) for i in mine]):
            idx = [mine[j] for j in part]
            batch = to_device(pre.collate([features[i] for i in idx]), run.device)
            with torch.inference_mode(), run.autocast():
                logits = task.forward(model, batch).logits.float()
            logits, labels = task.aligned(logits, batch["labels"])
            with torch.inference_mode():
                totals["loss"] += task.aligned_loss_sum(logits, labels, smoothing=False).double()
            totals["targets"] += task.count_targets(batch)
            recs = [records[i] for i in idx]
            generative = task.name != "classification"
            item = EvalBatch(
                task=task.name, logits=logits, labels=labels, records=recs,
                prompts=[pre.format_prompt(r) for r in recs] if generative else None,
                references=[str(r.get("target", r.get("text", ""))) for r in recs] if generative else None,
            )
            del logits, labels
            yield item
            # the suite is done with this batch: let its logits go before the next forward pass
            item.logits = item.labels = None  # type: ignore[assignment]
            del item
            if events is not None and state is not None:
                state.batch = batch
                events.emit("eval_batch", state)
            del batch

    budget = GenerationBudget(run.generation_time_budget)  # all the generation of this evaluation

    def generate(prompts: list[str]) -> list[str]:
        return generate_texts(model, run.tokenizer, prompts, batch_size=size, max_new_tokens=run.max_new_tokens,
                              budget=budget, autocast=run.autocast)

    model.eval()
    suite = run.metrics
    check_suite(suite)
    results = suite.run(batches(), generate=generate if task.generates else None, slices=slices,
                        confidence=confidence, seed=run.seed)
    loss_sum = run.dist.sum(totals["loss"])
    targets = run.dist.sum(torch.tensor(float(totals["targets"]), dtype=torch.float64, device=run.device))
    loss = float(loss_sum / targets.clamp(min=1))
    if task.generates and suite.needs_text and budget.seconds is not None:
        results["generated_fraction"] = _report_budget(run, suite, budget)
    return {"loss": loss, **results}


def _report_budget(run: EvalSetup, suite: Any, budget: GenerationBudget) -> float:
    """The share of prompts generated within the budget (all processes); a warning when some were not."""
    counts = run.dist.sum(torch.tensor([budget.generated, budget.skipped], dtype=torch.float64, device=run.device))
    generated, skipped = (int(c) for c in counts.tolist())
    suite.last_artifacts["generation"] = {"time_budget_s": budget.seconds, "generated": generated, "skipped": skipped}
    if skipped and run.dist.is_main:
        text = [m.name for m in suite.metrics if m.input == "text"]
        log.warning("generation_time_budget of %gs ran out: %d of %d prompts were generated; the other %d were "
                    "scored as empty outputs by %s (see generated_fraction in the results). Raise "
                    "generation_time_budget or lower max_new_tokens for a full evaluation.",
                    budget.seconds, generated, generated + skipped, skipped, ", ".join(text))
    return generated / max(1, generated + skipped)


@torch.inference_mode()
def predict_records(run: EvalSetup, records: list[dict[str, Any]], batch_size: int | None = None,
                    max_new_tokens: int | None = None) -> list[Any]:
    """Labels with scores (classification) or generated texts (LM tasks)."""
    model, pre = run.model, run.preprocessor
    size = batch_size or run.batch_size
    model.eval()
    if run.task.name != "classification":
        prompts = [pre.format_prompt(r) for r in records]
        return generate_texts(model, run.tokenizer, prompts, batch_size=size,
                              max_new_tokens=max_new_tokens or run.max_new_tokens, autocast=run.autocast)
    features = pre.encode([{k: v for k, v in r.items() if k != "label"} for r in records], "predict")
    names = pre.label_names or []
    out: list[Any] = [None] * len(features)
    for idx in sequential_batches(len(features), size, [pre.length(f) for f in features]):
        batch = to_device(pre.collate([features[i] for i in idx]), run.device)
        with run.autocast():
            probs = model(**batch).logits.float().softmax(-1)
        scores, ids = probs.max(-1)
        for j, i in enumerate(idx):
            out[i] = {"label": names[int(ids[j])] if names else int(ids[j]), "score": float(scores[j])}
    return out


__all__ = ["EvalSetup", "IGNORE_INDEX", "check_suite", "evaluate_model", "predict_records"]
