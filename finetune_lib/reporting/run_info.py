"""`RunInfo`: what the model card and the training report read about a run, as plain data.

Reporting takes this narrow input, not the trainer: `run_info_from_tuner` (in
`finetune_lib.reporting.tuner_info`, also importable from `finetune_lib.training.summary`) builds it
from a `FineTuner` (the reporting functions do that for you when handed a tuner), and a `RunInfo` can
be written by hand for a model trained elsewhere. Nothing in it is a path of the
machine that trained the model: a local model folder shows as its folder name.

Example:
    >>> info = RunInfo(task="classification", base_model="distilbert-base-uncased",
    ...                base_model_hub_id="distilbert-base-uncased", label_names=["neg", "pos"], max_length=128)
    >>> write_model_card(info, "runs/a/final")                                         # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

__all__ = ["BASELINE_PREFIX", "RunInfo", "describe", "display_path", "hub_id", "plain_value", "source_name",
           "split_baseline"]

#: the prefix of the base model's keys in ``evaluate(..., baseline=True)`` results: ``baseline/bleu``
BASELINE_PREFIX = "baseline/"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class RunInfo:
    """What the card and the report say about a run. Every field is plain data.

    Attributes:
        task: "classification", "causal_lm", "seq2seq", "multilabel_classification", "regression" or
            "token_classification".
        base_model: the base model as shown: its Hub id, a local folder's name (never the full
            path), or the model class's name.
        base_model_hub_id: the Hub id of the base model when it came from the Hub (the card's
            ``base_model`` metadata), else None.
        settings: the settings actually used, ``{name: value}`` (`TrainingArgs` fields, with the
            effective ``weight_decay`` of a `WeightDecay` regularizer; callables as their names).
        precision: the precision the run used ("bf16", "fp16", "fp32"), when known.
        history: the logged records (`FineTuner.history`): ``step``, ``epoch``, ``train/loss``,
            ``validation/<metric>``, ...
        label_names: classification labels in id order (None for generation tasks).
        max_length: tokens per example the training data was truncated to (None: not known).
        pack_length: tokens per packed row, when training rows were packed.
        prompt_format: for generation tasks, how a record becomes the model's input and target
            (one or more sentences), so a user can format prompts as in training.
        prompt_template: the Preprocessor's ``prompt_template`` (generation tasks).
        use_chat_template: prompts were rendered with the tokenizer's chat template.
        cleaning: names of the text cleaning steps, in order.
        encode_counts: ``{split: (examples, truncated)}`` the Preprocessor counted (a fallback data
            summary).
        freezer: the layer freezer's settings (its repr), or None when every parameter was trained.
        freeze_summary: the freezer's `FreezeSummary` (rows of part, module, trainable, frozen,
            lr_scale, status; ``trainable``, ``total``, ``notes``) or a text; None when not known.
        adapter: the adapter trained instead of the base weights (`LoRA.summary(model)`: ``method``, ``r``,
            ``alpha``, ``dropout``, ``target_modules``, ``modules_to_save``, ``adapted_layers``,
            ``layer_names``, ``blocks``, ``trainable_parameters``), or None without one.
        trainable_parameters: trainable parameters of the model (None when no model was loaded).
        total_parameters: all parameters of the model.
        regularizers: a readable description of each regularizer ("weight decay 0.01").
        metrics: metric names, in order.
        metric_signatures: ``{metric: signature}`` (sacrebleu's, for BLEU and chrF).
        data_summary: a `DataReport.to_dict()`, a text, or None.
        results: the evaluation results to report (``<metric>``, ``<metric>_low`` / ``_high``,
            ``<slice>/<metric>``), or None.
        baseline_results: the base model's results on the same data, with the same keys as `results`
            (``tuner.evaluate(test, baseline=True)`` returns them as ``baseline/<key>``); the card and
            the report then show base and fine-tuned side by side. None when not measured.
        confidence: the level of the intervals in `results` (0.95), or None.
        steps: optimizer steps trained (0: not trained in this session).
        epochs: epochs trained.
        weights_step: the step the final weights come from: the best evaluation's when early
            stopping restored it, else the last step; None when not trained in this session.
        stopped_early_at: the step at which early stopping ended training before its planned end;
            None when it did not.
        early_stopping_monitor: what early stopping watched ("validation/f1"), when it was used.
        run_folder: the run folder as given when relative, else its name; None without one.
        task_details: what the task's head was trained and saved with, by what (e.g. ``{"class weights
            (cross-entropy)": {label: weight}}``, multi-label thresholds, regression target scaling and
            loss; the task's `details()`); empty when there is nothing to say.
    """

    task: str
    base_model: str
    base_model_hub_id: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    label_names: list[Any] | None = None
    max_length: int | None = None
    pack_length: int | None = None
    prompt_format: str | None = None
    prompt_template: str | None = None
    use_chat_template: bool = False
    cleaning: list[str] = field(default_factory=list)
    encode_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    freezer: str | None = None
    freeze_summary: Any = None
    adapter: dict[str, Any] | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    regularizers: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    metric_signatures: dict[str, str] = field(default_factory=dict)
    data_summary: Any = None
    results: dict[str, Any] | None = None
    baseline_results: dict[str, Any] | None = None
    confidence: float | None = None
    steps: int = 0
    epochs: float = 0.0
    weights_step: int | None = None
    stopped_early_at: int | None = None
    early_stopping_monitor: str | None = None
    run_folder: str | None = None
    task_details: dict[str, Any] = field(default_factory=dict)


def split_baseline(results: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Results of ``evaluate(..., baseline=True)`` as (fine-tuned, base) dicts with the same keys; the base
    part is None when there are no ``baseline/`` keys.

    Example:
        >>> split_baseline({"bleu": 40.0, "baseline/bleu": 5.0})
        ({'bleu': 40.0}, {'bleu': 5.0})
    """
    if results is None:
        return None, None
    n = len(BASELINE_PREFIX)
    tuned = {k: v for k, v in results.items() if not str(k).startswith(BASELINE_PREFIX)}
    base = {str(k)[n:]: v for k, v in results.items() if str(k).startswith(BASELINE_PREFIX)}
    return tuned, base or None


def hub_id(source: Any) -> str | None:
    """`source` when it names a model on the Hub (``"org/name"`` or ``"name"``) rather than a local
    folder; otherwise None."""
    if not isinstance(source, str) or Path(source).exists() or not _HUB_ID.match(source):
        return None
    return source


def source_name(source: Any) -> str:
    """A model source as shown in a card: a Hub id as it is, a path as its last part (a local folder
    is never shown with the folders above it), a model object by its ``config.name_or_path`` (the
    same rules) or its class name."""
    if isinstance(source, (str, PurePath)):
        text = str(source)
        if hub_id(text):
            return text
        name = PurePath(text.rstrip("/\\")).name or Path(text).resolve().name
        return name.rsplit("\\", 1)[-1] or text
    config = getattr(source, "config", None)
    origin = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if isinstance(origin, str) and origin:
        return source_name(origin)
    return type(source).__name__


def display_path(path: Any) -> str | None:
    """A folder as shown in a report: as given when relative, else only its name."""
    if path is None:
        return None
    p = PurePath(str(path))
    return p.as_posix() if not p.is_absolute() else p.name


def describe(obj: Any) -> str:
    """A short readable description of a regularizer or callback: its ``describe()`` when it has one,
    else its ``str()`` (the whole of it, never cut), or its class name when that is Python's default
    ``<... object at 0x...>``."""
    method = getattr(obj, "describe", None)
    if callable(method):
        try:
            return str(method())
        except Exception:  # a user's describe() that fails must not stop a card from being written
            pass
    kind = type(obj)
    if kind.__str__ is object.__str__ and kind.__repr__ is object.__repr__:
        return kind.__name__
    return str(obj)


def plain_value(value: Any) -> Any:
    """A setting as plain data: callables and classes as their qualified names, others as they are."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_value(v) for v in value)
    if isinstance(value, PurePath):
        return display_path(value)
    if callable(value):
        func = getattr(value, "func", None)  # functools.partial
        name = getattr(value, "__qualname__", None) or getattr(func, "__qualname__", None)
        return f"{name}()" if name and func is None else (f"partial({name})" if name else type(value).__name__)
    return value
