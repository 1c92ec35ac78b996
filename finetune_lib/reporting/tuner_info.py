"""`run_info_from_tuner`: the plain facts of a run that the model card and the report print.

The card and the report read a `RunInfo`; this builder reads, by duck typing, what a `FineTuner`
actually used: the effective weight decay (from a `WeightDecay` regularizer), the ``max_length`` the
Preprocessor settled on, the prompt format of generation tasks, the step the final weights come
from. It imports nothing of the trainer (reporting never does: the trainer imports reporting), so
the reporting functions can take a `FineTuner` and convert it here (`as_run_info`).
`finetune_lib.training.summary` re-exports it beside the trainer.

Example:
    >>> from finetune_lib.reporting.tuner_info import run_info_from_tuner
    >>> info = run_info_from_tuner(tuner)                                          # doctest: +SKIP
    >>> info.weights_step, info.stopped_early_at                                   # doctest: +SKIP
    (6, 8)
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from .run_info import RunInfo, describe, display_path, hub_id, plain_value, source_name, split_baseline

__all__ = ["as_run_info", "prompt_format", "run_info_from_tuner"]


def as_run_info(run: Any) -> RunInfo:
    """`run` as a `RunInfo`: itself; what its ``run_info()`` method returns, when it has one; or, for a
    `FineTuner` (anything with ``history`` and ``args``), `run_info_from_tuner(run)`."""
    if isinstance(run, RunInfo):
        return run
    method = getattr(run, "run_info", None)
    if callable(method):
        return method()
    if hasattr(run, "history") and hasattr(run, "args"):
        return run_info_from_tuner(run)
    raise TypeError(f"expected a RunInfo or a FineTuner, got {type(run).__name__}")


def _base_model(source: Any) -> tuple[str, str | None]:
    """(name to show, Hub id or None) of a model source: a hub id, a folder, or a model object."""
    if isinstance(source, str):
        return source_name(source), hub_id(source)
    config = getattr(source, "config", None)
    origin = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return source_name(source), hub_id(origin) if isinstance(origin, str) else None


def _settings(tuner: Any) -> dict[str, Any]:
    args = tuner.args
    names = [f.name for f in fields(args)] if is_dataclass(args) else list(vars(args))
    settings = {name: plain_value(getattr(args, name)) for name in names}
    # the weight decay the optimizer used: set by a WeightDecay regularizer, never by a setting
    settings["weight_decay"] = float(getattr(tuner, "weight_decay", 0.0) or 0.0)
    factory = getattr(tuner, "optimizer_factory", None)
    settings["optimizer"] = "AdamW" if factory is None else plain_value(factory)
    return settings


def prompt_format(task: str, preprocessor: Any, tokenizer: Any = None) -> str | None:
    """How a generation record becomes the model's input and target, in words (None for classification)."""
    if task not in ("causal_lm", "seq2seq"):
        return None
    template = getattr(preprocessor, "prompt_template", "{prompt}") or "{prompt}"
    shaped = ("the record's `prompt` as it is" if template == "{prompt}"
              else f"the record's `prompt` formatted with the template `{template!r}`")
    if getattr(preprocessor, "use_chat_template", False):
        if tokenizer is None or getattr(tokenizer, "chat_template", None):
            shaped += (", as the one user message of the tokenizer's chat template (with the opening of the "
                       "assistant's turn)")
        else:
            shaped += " (the tokenizer has no chat template, so none was applied)"
    n = getattr(preprocessor, "max_length", None)
    if task == "causal_lm":
        text = (f"the input is {shaped}, followed directly by the `target` and the EOS token; the loss covers the "
                "target tokens only (a record without a prompt is learned whole)")
        if n:
            text += (f"; prompt and target together fit in {n} tokens: a longer example loses the start of its "
                     "prompt first, then the end of its target")
        return text
    text = f"the encoder input is {shaped}; the decoder learns the `target` followed by the EOS token"
    if n:
        text += f"; each is cut to {n} tokens (their ends are dropped)"
    return text


def _chat_template_used(task: str, preprocessor: Any, tokenizer: Any) -> bool:
    """Whether prompts went through the tokenizer's chat template (asked for, and the tokenizer has one)."""
    if task == "classification" or not getattr(preprocessor, "use_chat_template", False):
        return False
    return tokenizer is None or bool(getattr(tokenizer, "chat_template", None))


def _early_stopping(regularizers: list[Any]) -> Any:
    for reg in regularizers:
        if hasattr(reg, "stopped_step") and hasattr(reg, "monitor"):
            return reg
    return None


def _freeze_summary(freezer: Any) -> Any:
    if freezer is None or not hasattr(freezer, "summary"):
        return None
    try:
        return freezer.summary()
    except Exception:  # not applied yet (the tuner was never fitted)
        return None


def _adapter(tuner: Any) -> dict[str, Any] | None:
    """The adapter's `summary(model)` (a `LoRA`'s settings, adapted layers, trainable parameters), or None."""
    adapter = getattr(tuner, "adapter", None)
    summary = getattr(adapter, "summary", None)
    if adapter is None or not callable(summary):
        return None
    try:
        return dict(summary(getattr(tuner, "model", None)))
    except Exception:  # a card must not fail over it
        return {"method": type(adapter).__name__}


def _signatures(tuner: Any) -> dict[str, str]:
    artifacts = getattr(tuner, "last_artifacts", None) or getattr(tuner.metrics, "last_artifacts", None) or {}
    suffix = "_signature"
    return {key[: -len(suffix)]: value for key, value in artifacts.items()
            if isinstance(key, str) and key.endswith(suffix) and isinstance(value, str)}


def run_info_from_tuner(tuner: Any) -> RunInfo:
    """The `RunInfo` of a `FineTuner`: what it was configured with and what its run actually did.

    Reads ``model_source``, ``task``, ``args``, ``weight_decay`` (the effective value),
    ``optimizer_factory``, ``precision``, ``history``, ``preprocessor`` (labels, settled
    ``max_length``, prompt template, cleaning steps, counts), ``tokenizer``, ``freezer``, ``adapter``
    (its ``summary(model)``), ``model``
    (parameter counts), ``regularizers`` (their ``describe()``, and an `EarlyStopping`'s
    ``stopped_step`` / ``restored_step``), ``metrics``, ``last_artifacts``, ``data_summary``,
    ``last_results`` (its ``baseline/`` keys become ``baseline_results``), ``last_confidence`` and
    ``output_dir``.
    """
    pre = tuner.preprocessor
    task = tuner.task.name
    history = [dict(r) for r in tuner.history]
    steps = max((int(r.get("step", 0)) for r in history), default=0)
    epochs = max((float(r.get("epoch", 0)) for r in history), default=0.0)
    base, base_hub = _base_model(tuner.model_source)
    stopper = _early_stopping(list(tuner.regularizers))
    restored = getattr(stopper, "restored_step", None) if stopper is not None else None
    model = getattr(tuner, "model", None)
    trainable = total = None
    if model is not None:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    data = getattr(tuner, "data_summary", None)
    if data is not None and hasattr(data, "to_dict"):
        data = data.to_dict()
    precision = getattr(tuner, "precision", None)
    precision = getattr(precision, "name", None) or getattr(precision, "dtype", None)
    metrics = getattr(tuner, "metrics", None)
    cleaning = [s if isinstance(s, str) else getattr(s, "__name__", type(s).__name__)
                for s in getattr(pre, "clean_steps", [])]
    results, baseline = split_baseline(dict(tuner.last_results) if getattr(tuner, "last_results", None) else None)
    return RunInfo(
        task=task,
        base_model=base,
        base_model_hub_id=base_hub,
        settings=_settings(tuner),
        precision=None if precision is None else str(precision),
        history=history,
        label_names=list(pre.label_names) if getattr(tuner.task, "has_classes", task == "classification")
        and pre.label_names else None,
        max_length=pre.max_length,
        pack_length=(pre.pack_length or pre.max_length) if getattr(pre, "pack", False) else None,
        prompt_format=prompt_format(task, pre, getattr(tuner, "tokenizer", None)),
        prompt_template=getattr(pre, "prompt_template", None) if task in ("causal_lm", "seq2seq") else None,
        use_chat_template=_chat_template_used(task, pre, getattr(tuner, "tokenizer", None)),
        cleaning=cleaning,
        encode_counts={name: (s.examples, s.truncated) for name, s in getattr(pre, "stats", {}).items()},
        freezer=None if tuner.freezer is None else repr(tuner.freezer),
        freeze_summary=_freeze_summary(tuner.freezer),
        adapter=_adapter(tuner),
        trainable_parameters=trainable,
        total_parameters=total,
        regularizers=[describe(r) for r in tuner.regularizers],
        metrics=list(getattr(metrics, "names", []) or []),
        metric_signatures=_signatures(tuner),
        data_summary=data,
        results=results,
        baseline_results=baseline,
        confidence=getattr(tuner, "last_confidence", None),
        steps=steps,
        epochs=epochs,
        weights_step=(restored if restored is not None else steps) if steps else None,
        stopped_early_at=getattr(stopper, "stopped_step", None) if stopper is not None else None,
        early_stopping_monitor=getattr(stopper, "monitor", None) if stopper is not None else None,
        run_folder=display_path(getattr(tuner, "output_dir", None)),
        task_details=tuner.task.details(list(pre.label_names or [])) if hasattr(tuner.task, "details") else {},
    )
