"""`MetricSuite`: many streaming metrics over an evaluation set in one pass, with per-slice results
and bootstrap confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.distributed as dist

from .base import INPUTS, Metric, NoDataError
from .batch import EvalBatch
from .bootstrap import ExampleStats, bootstrap_interval, is_scalar, restrict
from .classification import F1, Accuracy
from .language import Perplexity, TokenAccuracy
from .routing import Slices, SliceSpec, feed, route
from .state import all_gather_objects, is_distributed

TASKS = ("classification", "causal_lm", "seq2seq", "multilabel_classification", "regression", "token_classification")
GENERATING_TASKS = ("causal_lm", "seq2seq")  # the tasks whose evaluation generates text
SUGGESTED = {
    "classification": "Accuracy(), F1(average='macro'), Precision(), Recall(), ConfusionMatrix()",
    "causal_lm": "Perplexity(), TokenAccuracy(), BLEU(), ChrF(), ExactMatch(), RougeL()",
    "seq2seq": "Perplexity(), TokenAccuracy(), BLEU(), ChrF(), ExactMatch(), RougeL()",
    "multilabel_classification": "MultiLabelF1(average='micro'), MultiLabelF1(average='macro'), "
                                 "MultiLabelF1(average='samples'), HammingLoss(), SubsetAccuracy()",
    "regression": "MeanSquaredError(), MeanAbsoluteError(), R2Score(), PearsonCorrelation(), SpearmanCorrelation()",
    "token_classification": "EntityPrecision(), EntityRecall(), EntityF1(), EntityF1(entity_type='PER', "
                            "name='f1_PER'), TagAccuracy(), EntityReport()",
}


@dataclass
class _Intervals:
    """Bootstrap settings and the pooled per-example statistics of one run."""

    confidence: float
    n_bootstrap: int
    seed: int
    pooled: dict[str, tuple[Any, np.ndarray]]
    n_examples: int

    def __call__(self, metric: Metric, examples: np.ndarray | None) -> tuple[float, float]:
        if metric.name not in self.pooled:
            return math.nan, math.nan
        stats, owners = self.pooled[metric.name]
        n = self.n_examples
        if examples is not None:  # a slice: its examples only
            stats, owners = restrict(stats, owners, examples, self.n_examples)
            n = len(examples)
        return bootstrap_interval(metric, stats, owners, n, self.confidence, self.n_bootstrap, self.seed)


class MetricSuite:
    """A set of metrics computed together over an evaluation set, in one streaming pass.

    Args:
        metrics: the metrics; their `name`s are the result keys and must be unique.
        sync_on_compute: under torch.distributed, combine the states of all processes before
            computing (each process must then evaluate a disjoint shard); False reports each
            process's own data.

    Attributes:
        metrics: the metrics (after `run`, they hold the state of the whole evaluation set).
        last_artifacts: non-scalar values of the last `run` (e.g. a confusion matrix), by key, and
            the signature of each metric that has one (sacrebleu's, for BLEU and chrF) as
            ``"<name>_signature"``, e.g. ``"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"``.

    Example:
        >>> from finetune_lib.metrics import Accuracy, F1, MetricSuite
        >>> suite = MetricSuite([Accuracy(), F1(average="macro")])
        >>> suite.names, suite.needs_text
        (['accuracy', 'f1'], False)
    """

    def __init__(self, metrics: Sequence[Metric], sync_on_compute: bool = True) -> None:
        for m in metrics:
            if not isinstance(m, Metric):
                hint = (
                    f" (did you pass the class {m.__name__} instead of an instance {m.__name__}()?)"
                    if isinstance(m, type)
                    else ""
                )
                raise TypeError(f"MetricSuite takes Metric instances, got {m!r}{hint}")
        seen: dict[str, Metric] = {}
        for m in metrics:
            if m.name in seen:
                raise ValueError(
                    f"two metrics are named {m.name!r} ({seen[m.name]!r} and {m!r}); names are the result keys, "
                    f"so they must be unique: pass name=..., e.g. F1(average='micro', name='f1_micro')."
                )
            seen[m.name] = m
        self.metrics = list(metrics)
        self.sync_on_compute = sync_on_compute
        self.last_artifacts: dict[str, Any] = {}

    @classmethod
    def default(cls, task: str) -> MetricSuite:
        """The suite used when the user gives none: classification -> accuracy and macro F1;
        causal_lm / seq2seq -> perplexity and token accuracy; multi-label -> micro, macro and samples
        F1, Hamming loss and subset accuracy; regression -> MSE, MAE, R², Pearson and Spearman."""
        if task == "classification":
            return cls([Accuracy(), F1(average="macro")])
        if task in ("causal_lm", "seq2seq"):
            return cls([Perplexity(), TokenAccuracy()])
        if task == "multilabel_classification":
            from .multilabel import HammingLoss, MultiLabelF1, SubsetAccuracy

            return cls([MultiLabelF1(average="micro"), MultiLabelF1(average="macro"),
                        MultiLabelF1(average="samples"), HammingLoss(), SubsetAccuracy()])
        if task == "regression":
            from .regression import (
                MeanAbsoluteError,
                MeanSquaredError,
                PearsonCorrelation,
                R2Score,
                SpearmanCorrelation,
            )

            return cls([MeanSquaredError(), MeanAbsoluteError(), R2Score(), PearsonCorrelation(),
                        SpearmanCorrelation()])
        if task == "token_classification":  # entity-level scores in the CoNLL sense, per-type report in artifacts
            from .entities import EntityF1, EntityPrecision, EntityRecall, EntityReport, TagAccuracy

            return cls([EntityPrecision(), EntityRecall(), EntityF1(), TagAccuracy(), EntityReport()])
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")

    @property
    def names(self) -> list[str]:
        """The metric names (result keys), in order."""
        return [m.name for m in self.metrics]

    @property
    def needs_text(self) -> bool:
        """True when some metric consumes generated text (then `run` needs `generate`)."""
        return any(m.input == "text" for m in self.metrics)

    def check_task(self, task: str) -> None:
        """Raise a `ValueError` when a metric cannot run on `task`, before any training.

        "text" metrics (BLEU, chrF, ...) need a task that generates text (causal_lm, seq2seq); a
        metric with `tasks` set runs on those only (Perplexity and TokenAccuracy read token logits,
        which classification does not give). The name "loss" is the evaluation loss's key.

        Example:
            >>> from finetune_lib.metrics import BLEU, MetricSuite
            >>> MetricSuite([BLEU()]).check_task("classification")
            Traceback (most recent call last):
            ValueError: Metrics that cannot run on task 'classification': BLEU ('bleu') scores generated text...
        """
        check_metrics_for_task(self.metrics, task)

    def clone(self) -> MetricSuite:
        """A suite of fresh copies of the metrics (same settings, empty states)."""
        return MetricSuite([m.clone() for m in self.metrics], sync_on_compute=self.sync_on_compute)

    def run(
        self,
        batches: Iterable[EvalBatch],
        generate: Callable[[list[str]], list[str]] | None = None,
        slices: SliceSpec | None = None,
        confidence: float | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
    ) -> dict[str, float]:
        """Resets the metrics, streams `batches` through them and returns ``{name: value}``.

        Each metric is fed according to its `input`: "classes" metrics get ``(batch.preds,
        batch.labels)`` (for LM tasks, token-level ids with the -100 positions dropped);
        "logits" metrics get ``(batch.logits, batch.labels)``; "text" metrics get
        ``(generate(batch.prompts), batch.references)``, `generate` being called once per batch
        and only when some metric consumes text. Non-scalar values go to `last_artifacts`, and so
        do the metrics' signatures (``"<name>_signature"``, whole set only).

        Args:
            batches: the evaluation batches (consumed once; only one is held at a time).
            generate: ``prompts -> generated texts``; required when `needs_text`.
            slices: ``{slice_name: predicate(record) -> bool}`` or a record column name (one slice
                per distinct value, named ``str(value)``). Adds ``"<slice>/<metric>"`` and
                ``"<slice>/count"`` keys (NaN for a metric with no data in the slice).
            confidence: e.g. 0.95 adds ``"<key>_low"`` / ``"<key>_high"`` for every scalar key
                (slices included): a seeded percentile bootstrap over examples. This keeps compact
                per-example statistics for the whole set (see `bootstrap.py` for their size).
            n_bootstrap: number of resamples.
            seed: seed of the resampling (same seed, same intervals).

        Example:
            >>> import torch
            >>> from finetune_lib.metrics import Accuracy, EvalBatch, MetricSuite
            >>> batch = EvalBatch("classification", torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]),
            ...                   torch.tensor([0, 1, 1]), [{"lang": "en"}, {"lang": "fr"}, {"lang": "fr"}])
            >>> MetricSuite([Accuracy()]).run([batch], slices="lang")
            {'accuracy': 0.6666666666666666, 'en/count': 1, 'en/accuracy': 1.0, 'fr/count': 2, 'fr/accuracy': 0.5}
        """
        self._check_run(generate, confidence, n_bootstrap)
        for metric in self.metrics:
            metric.reset()
        sliced = (
            Slices(slices, self.metrics, keep_examples=confidence is not None) if slices is not None else None
        )
        store = ExampleStats() if confidence is not None else None
        kinds = {m.input for m in self.metrics}
        seen = 0
        for batch in batches:
            # 1. generate text once per batch, only if a metric reads it
            texts = self._generate(batch, generate) if "text" in kinds else None
            # 2. route: class ids, logits and text, each in the form its metrics consume
            routed = route(batch, kinds, texts)
            # 3. stream into the metrics, the slices' clones and (for intervals) per-example stats
            feed(self.metrics, routed)
            if sliced is not None:
                sliced.add(batch.records, routed, seen)
            if store is not None:
                for m in self.metrics:
                    if m.scalar:
                        store.add(
                            m.name, m.example_stats(*routed.inputs[m.input]), routed.rows(m.input) + seen
                        )
            seen += routed.size
            # 4. drop this batch's tensors before the next forward pass: `routed` holds its logits
            del routed, texts, batch
        # 5. combine the processes (no-op unless torch.distributed is initialized)
        offsets, total = self._sync(sliced, seen)
        # 6. compute: overall, then per slice
        intervals = None
        if store is not None:
            assert confidence is not None
            intervals = _Intervals(confidence, n_bootstrap, seed, store.gathered(offsets), total)
        results: dict[str, float] = {}
        self.last_artifacts = {}
        self._report(self.metrics, "", results, intervals, None)
        if sliced is not None:
            for name in sliced.names():
                results[f"{name}/count"] = sliced.counts[name]
                examples = sliced.example_ids(name) if intervals is not None else None
                self._report(sliced.metrics[name], f"{name}/", results, intervals, examples)
        return results

    # ---- helpers of run ----------------------------------------------------------------------------
    def _check_run(self, generate: Callable | None, confidence: float | None, n_bootstrap: int) -> None:
        text = [m.name for m in self.metrics if m.input == "text"]
        if text and generate is None:
            raise ValueError(
                f"metrics {text} consume generated text: pass generate=<callable(prompts) -> texts> to run()"
            )
        if confidence is None:
            return
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
        if n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1 (e.g. 1000), got {n_bootstrap!r}")
        for m in self.metrics:
            if m.scalar and m.input == "logits" and type(m).example_stats is Metric.example_stats:
                raise m._no_stats()

    def _generate(self, batch: EvalBatch, generate: Callable[[list[str]], list[str]] | None) -> list[str]:
        if batch.prompts is None or batch.references is None:
            raise ValueError(
                f"metrics {[m.name for m in self.metrics if m.input == 'text']} consume generated text, but this "
                f"{batch.task!r} batch has no prompts/references: text metrics need causal_lm or seq2seq batches"
            )
        assert generate is not None
        texts = generate(list(batch.prompts))
        if isinstance(texts, str) or len(texts) != len(batch.prompts):
            got = "a string" if isinstance(texts, str) else f"{len(texts)} texts"
            raise ValueError(
                f"generate(prompts) must return one string per prompt: got {got} for {len(batch.prompts)} prompts"
            )
        return list(texts)

    def _sync(self, sliced: Slices | None, seen: int) -> tuple[list[int], int]:
        """Combines the states of all processes; returns each process's first example index (rank
        order) and the number of examples over all processes."""
        if not (self.sync_on_compute and is_distributed()):
            return [0], seen
        sizes = [int(x) for x in all_gather_objects(seen)]
        offsets = [sum(sizes[:rank]) for rank in range(len(sizes))]
        for metric in self.metrics:
            metric.sync()
        if sliced is not None:
            sliced.sync(offsets[dist.get_rank()])
        return offsets, sum(sizes)

    def _report(
        self,
        metrics: Sequence[Metric],
        prefix: str,
        results: dict[str, float],
        intervals: _Intervals | None,
        examples: np.ndarray | None,
    ) -> None:
        for metric in metrics:
            key = prefix + metric.name
            try:
                value = metric.compute()
            except NoDataError:
                if not prefix:  # the whole evaluation set: an error; an empty slice: NaN
                    raise
                value = math.nan
            signature = getattr(metric, "signature", None)
            if not prefix and isinstance(signature, str):  # e.g. sacrebleu's, set by compute()
                self.last_artifacts[f"{key}_signature"] = signature
            if not is_scalar(value):
                self.last_artifacts[key] = value
                continue
            results[key] = float(value)
            if intervals is not None and metric.scalar:
                results[key + "_low"], results[key + "_high"] = intervals(metric, examples)

    def __repr__(self) -> str:
        return f"MetricSuite({self.metrics!r})"


def check_metrics_for_task(metrics: Sequence[Metric], task: str) -> None:
    """`MetricSuite.check_task` for a plain sequence of metrics."""
    problems = []
    for m in metrics:
        if m.input == "text" and task not in GENERATING_TASKS:
            problems.append(f"{type(m).__name__} ({m.name!r}) scores generated text, and the {task!r} task "
                            f"generates none (only {' and '.join(GENERATING_TASKS)} do)")
        elif m.tasks is not None and task not in m.tasks:
            problems.append(f"{type(m).__name__} ({m.name!r}) runs on {' and '.join(m.tasks)} only")
        elif m.input not in _task_inputs(task):
            problems.append(f"{type(m).__name__} ({m.name!r}) reads {m.input!r} inputs, which the {task!r} task "
                            f"does not give (it gives {', '.join(map(repr, _task_inputs(task)))})")
    if problems:
        fit = f" For {task!r}, use e.g. {SUGGESTED[task]}." if task in SUGGESTED else ""
        raise ValueError(f"Metrics that cannot run on task {task!r}: {'; '.join(problems)}. Remove them from the "
                         f"MetricSuite, or choose the task they are made for.{fit}")
    if any(m.name == "loss" for m in metrics):
        raise ValueError("A metric is named 'loss', which is the key of the evaluation loss FineTuner reports. "
                         "Give it another name, e.g. MyMetric(name='my_loss').")


def _task_inputs(task: str) -> tuple[str, ...]:
    """The metric inputs `task` gives (`Task.metric_inputs`); every kind for a task not registered."""
    from ..tasks import TASKS as REGISTERED
    from ..tasks import get_task

    return tuple(getattr(get_task(task), "metric_inputs", INPUTS)) if task in REGISTERED else INPUTS


def suite_for_task(metrics: Any, task: str) -> Any:
    """`FineTuner(metrics=...)` made ready for `task` and checked against it before any step.

    None gives the task's default suite; a `Metric` or a list of them is wrapped in a `MetricSuite`;
    a suite (or an object with `run()` and `metrics`) is checked with `check_metrics_for_task`.
    """
    if metrics is None:
        return MetricSuite.default(task)
    if isinstance(metrics, Metric):
        metrics = [metrics]
    if isinstance(metrics, (list, tuple)):
        metrics = MetricSuite(metrics)
    if not callable(getattr(metrics, "run", None)):
        raise TypeError(f"metrics must be a MetricSuite, e.g. MetricSuite([Accuracy(), F1(average='macro')]); got "
                        f"{type(metrics).__name__}.")
    check_metrics_for_task(list(getattr(metrics, "metrics", [])), task)
    return metrics
