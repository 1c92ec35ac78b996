"""The evaluation loop and predictions: one batch of logits at a time, handed to the MetricSuite."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..data.collate import feature_lengths, gather, sequential_batches, to_device
from ..events import CallbackList, TrainState
from ..generation import check_generation_settings, stop_token_ids
from ..metrics.batch import EvalBatch
from ..reporting.run_info import BASELINE_PREFIX
from ..tasks import IGNORE_INDEX, GenerationBudget, generate_texts
from .generations import GenerationLog, record_prompt, record_reference, with_baseline

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
        seed: the seed of bootstrap confidence intervals and of sampling.
        temperature: sampling temperature (with `do_sample`).
        top_p: nucleus of sampling (with `do_sample`).
        do_sample: sample instead of greedy decoding (seeded with `seed`).
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
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = False

    def generation_options(self, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments of `generate_texts` for this run (`max_new_tokens`, sampling, stop
        tokens), with `overrides` (None values ignored) checked and applied."""
        options = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                   "do_sample": self.do_sample, **{k: v for k, v in overrides.items() if v is not None}}
        check_generation_settings(**options)
        chat_template = getattr(self.preprocessor, "chat_template", None)
        options["stop_token_ids"] = stop_token_ids(self.tokenizer, self.model, chat_template)
        return options


def check_suite(metrics: Any) -> None:
    """Refuse a metric named 'loss' (the key of the evaluation loss)."""
    if "loss" in metrics.names:
        raise ValueError("A metric is named 'loss', which is the key of the evaluation loss FineTuner reports. "
                         "Give it another name, e.g. MyMetric(name='my_loss').")


def evaluate_model(run: EvalSetup, records: list[dict[str, Any]], features: list[dict[str, Any]], *,
                   slices: Any = None, confidence: float | None = None, batch_size: int | None = None,
                   events: CallbackList | None = None, state: TrainState | None = None,
                   baseline: Any = None) -> dict[str, float]:
    """Loss (mean over target tokens or examples, no label smoothing) and the suite's metrics.

    When a metric reads generated text, the suite's ``last_artifacts["generations"]`` holds one row
    per record, in the records' order (`finetune_lib.training.generations`). Generation uses the
    run's settings (`max_new_tokens`, sampling seeded per batch from `seed`) and stops at EOS and
    end-of-turn tokens, as `predict` does.

    With `baseline` (a `finetune_lib.training.baseline.BaseSource`) the base model is evaluated
    too, on the same records with the same settings, and its results are added as
    ``baseline/<key>`` (`evaluate_with_baseline`).

    With `generation_time_budget` set and a metric that reads generated text, the results also hold
    ``generated_fraction``: the share of prompts generated before the budget ran out. The prompts
    left get empty outputs, and the text metrics score them as they are: an honest score of what
    was generated over the whole set (the same examples, and slices, as the loss and the other
    metrics), never a score of a subset that flatters (the batches run longest first, so a subset
    would hold only the longest examples). A warning then says how many prompts were generated,
    and the suite's ``last_artifacts["generation"]`` holds the counts.
    """
    if baseline is not None:
        return evaluate_with_baseline(run, baseline, records, features, slices=slices, confidence=confidence,
                                      batch_size=batch_size)
    model, task, pre = run.model, run.task, run.preprocessor
    size = batch_size or run.batch_size
    generative = task.generates
    log_rows = GenerationLog()
    has_labels = features.has("labels") if hasattr(features, "has") else all("labels" in f for f in features)
    if not has_labels:
        raise ValueError("Evaluation needs labels (classification) or targets (generation) in every record.")
    totals = {"loss": torch.zeros((), dtype=torch.float64, device=run.device), "targets": 0}

    mine = run.dist.shard(range(len(features)))  # each process evaluates a disjoint shard
    lengths = feature_lengths(pre, features)  # ArrowFeatures: column-wise

    def batches() -> Iterator[EvalBatch]:
        for part in sequential_batches(len(mine), size, [lengths[i] for i in mine]):
            idx = [mine[j] for j in part]
            batch = to_device(pre.collate(gather(features, idx)), run.device)
            with torch.inference_mode(), run.autocast():
                logits = task.forward(model, batch).logits.float()
            logits, labels = task.aligned(logits, batch["labels"])
            with torch.inference_mode():
                totals["loss"] += task.aligned_loss_sum(logits, labels, smoothing=False).double()
            totals["targets"] += task.count_targets(batch)
            recs = [records[i] for i in idx]
            prompts = [record_prompt(pre, r) for r in recs] if generative else None
            references = [record_reference(pre, r) for r in recs] if generative else None
            if prompts is not None and references is not None:
                log_rows.expect(idx, prompts, references)  # the texts generated for this batch go to these rows
            item = EvalBatch(task=task.name, logits=logits, labels=labels, records=recs, prompts=prompts,
                             references=references, predictions=task.metric_predictions(logits),
                             extra=task.eval_extra(logits, batch, recs, pre))  # token classification: word tags
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
    options = run.generation_options() if task.generates else {}
    calls = [0]

    def generate(prompts: list[str]) -> list[str]:
        before = budget.generated
        seed = (run.seed + calls[0]) % 2**32  # sampling: one seed per batch, the same in every evaluation
        calls[0] += 1
        texts = generate_texts(model, run.tokenizer, prompts, batch_size=size, budget=budget, autocast=run.autocast,
                               seed=seed, **options)
        log_rows.add(prompts, texts, budget.generated - before)
        return texts

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
    if task.generates and suite.needs_text:
        suite.last_artifacts["generations"] = log_rows.rows()  # in the records' order, every process's
    return {"loss": loss, **results}


def evaluate_with_baseline(run: EvalSetup, base: Any, records: list[dict[str, Any]],
                           features: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """The fine-tuned model's results and the base model's as ``baseline/<key>``, on the same records with
    the same `EvalSetup` (metrics, generation settings, seed); the base model (`base.open(model, device)`,
    a `finetune_lib.training.baseline.BaseSource`) is evaluated first. With text metrics each row of
    ``last_artifacts["generations"]`` gets the base model's text (``baseline``); the base run's other
    artifacts go to ``last_artifacts["baseline"]``."""
    suite = run.metrics
    with base.open(run.model, run.device) as model:
        base_results = evaluate_model(replace(run, model=model), records, features, **kwargs)
    base_artifacts = dict(getattr(suite, "last_artifacts", {}))
    results = evaluate_model(run, records, features, **kwargs)
    artifacts = suite.last_artifacts
    if "generations" in artifacts and "generations" in base_artifacts:
        artifacts["generations"] = with_baseline(artifacts["generations"], base_artifacts.pop("generations"))
    artifacts["baseline"] = base_artifacts
    return {**results, **{BASELINE_PREFIX + k: v for k, v in base_results.items()}}


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
                    max_new_tokens: int | None = None, **sampling: Any) -> list[Any]:
    """Labels with scores (classification), labels with per-label scores (multi-label), values (regression)
    or generated texts (LM tasks): `Task.predict_rows`; per-word tags and entities (token classification,
    `finetune_lib.token_task.predict_tagged`).

    LM tasks generate from `record_prompt` (conversations rendered with the chat template and the
    generation prompt) with the run's generation settings; `max_new_tokens` and `sampling`
    (`temperature`, `top_p`, `do_sample`) override them when not None.
    """
    model, pre = run.model, run.preprocessor
    size = batch_size or run.batch_size
    model.eval()
    if run.task.label_kind == "tags":  # token classification: tags and entities per word
        from ..token_task import predict_tagged

        return predict_tagged(run, records, size)
    if run.task.generates:
        options = run.generation_options(max_new_tokens=max_new_tokens, **sampling)
        prompts = [record_prompt(pre, r) for r in records]
        return generate_texts(model, run.tokenizer, prompts, batch_size=size, autocast=run.autocast, seed=run.seed,
                              **options)
    features = pre.encode([{k: v for k, v in r.items() if k != "label"} for r in records], "predict")
    names = pre.label_names or []
    out: list[Any] = [None] * len(features)
    for idx in sequential_batches(len(features), size, [pre.length(f) for f in features]):
        batch = to_device(pre.collate([features[i] for i in idx]), run.device)
        with run.autocast():
            logits = model(**batch).logits.float()
        for i, row in zip(idx, run.task.predict_rows(logits, names)):  # the task's shape of a prediction
            out[i] = row
    return out


__all__ = ["EvalSetup", "IGNORE_INDEX", "check_suite", "evaluate_model", "evaluate_with_baseline", "predict_records"]
