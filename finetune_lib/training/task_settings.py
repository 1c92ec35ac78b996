"""The settings of the label tasks, applied to the task object: class weights (classification and
multi-label), per-label thresholds (multi-label), target scaling and the loss (regression).

`FineTuner` calls these helpers: `check_task_settings` when it is built, `configure_task` once the
labels are known and before any step, `tune_thresholds` after `fit`, and `saved_weights` in `save`.

* ``class_weights="balanced"`` weighs classification's cross-entropy by scikit-learn's
  ``compute_class_weight("balanced", classes=labels, y=train_labels)`` (``n / (K * count)``), and
  multi-label's BCE by ``pos_weight = negatives / positives`` per label; a mapping
  ``{label: weight}`` gives the weights (1.0 for the labels it leaves out).
* Thresholds: a label is predicted when its probability reaches its threshold (``threshold``, 0.5
  by default). With ``tune_thresholds=True`` and validation data, each label's threshold is the one
  that maximizes that label's F1 on the validation set (ties: the one nearest 0.5). They are saved in
  ``config.json`` as ``finetune_lib_thresholds`` (``pipeline()`` does not apply them) and read back
  when a saved model is loaded.
* ``scale_targets=True`` trains the head on ``(y - mean) / std`` of the training targets; `save` folds
  them into the head's last linear layer (``W' = std * W``, ``b' = std * b + mean``) so the saved model
  predicts the targets' units everywhere (Auto classes, ``pipeline(function_to_apply="none")``).

Example:
    >>> tuner = FineTuner("path/to/model", task="classification", class_weights="balanced")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..data.arrow_data import is_arrow, label_column, label_counts, label_records
from ..sequence_tasks import DEFAULT_THRESHOLD, REGRESSION_LOSSES

THRESHOLDS_KEY = "finetune_lib_thresholds"  # config.json: {label name: threshold}
SCALING_KEY = "finetune_lib_target_scaling"  # config.json: {"mean", "std"} folded into the saved head


def validate_task_args(args: Any) -> None:
    """The values of the task settings, whatever the task (`TrainingArgs.validate` calls it)."""
    weights = args.class_weights
    if weights is not None and weights != "balanced":
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"class_weights must be 'balanced', a mapping {{label: weight}} (e.g. "
                             f"{{'spam': 5.0, 'ham': 1.0}}) or None; got {weights!r}.")
        bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, numbers.Real)
               or not math.isfinite(float(v)) or float(v) <= 0}
        if bad:
            raise ValueError(f"class_weights must be positive finite numbers; got {bad}. A weight of 0 would drop a "
                             "class from the loss: remove its records instead.")
    if args.regression_loss not in REGRESSION_LOSSES:
        raise ValueError(f"regression_loss must be one of {', '.join(map(repr, REGRESSION_LOSSES))}, got "
                         f"{args.regression_loss!r}.")


def check_task_settings(task: Any, args: Any, adapter: Any = None) -> Any:
    """`task`, once the settings it has no use for are refused (before anything is loaded)."""
    problems = []
    if args.class_weights is not None and not task.has_classes:
        problems.append(f"class_weights is for tasks with classes (classification, multilabel_classification), "
                        f"and task {task.name!r} has none: remove it")
    if task.label_kind != "classes" and (args.tune_thresholds or args.threshold != DEFAULT_THRESHOLD):
        problems.append("threshold and tune_thresholds are for task='multilabel_classification': remove them")
    if task.label_kind != "value" and (args.scale_targets or args.regression_loss != "mse"):
        problems.append("scale_targets and regression_loss are for task='regression': remove them")
    if task.label_kind == "value" and args.scale_targets and adapter is not None:
        problems.append("scale_targets=True is not supported with an adapter (the scaling is folded into the "
                        "head at save): standardize the targets yourself, or train without the adapter")
    if problems:
        raise ValueError("; ".join(problems) + ".")
    return task


def head_labels(pre: Any) -> dict[str, Any]:
    """The label mapping a classification or multi-label head is built with."""
    return {"id2label": pre.id2label, "label2id": {str(n): i for i, n in enumerate(pre.label_names or [])},
            "observed": pre.observed_labels}


def configure_task(task: Any, pre: Any, model: Any, args: Any, records: list[dict[str, Any]] | None) -> None:
    """Give `task` its weights, thresholds, scaling and loss: from the training `records` (fit), or
    from a saved model's config (evaluate/predict with no training records)."""
    names = list(pre.label_names or [])
    if task.label_kind == "classes":
        saved = getattr(model.config, THRESHOLDS_KEY, None)
        if isinstance(saved, Mapping) and records is None:
            task.thresholds = torch.tensor([float(saved.get(str(n), DEFAULT_THRESHOLD)) for n in names])
        elif task.thresholds is None and args.threshold != DEFAULT_THRESHOLD:
            task.thresholds = torch.full((len(names),), float(args.threshold))
    if task.label_kind == "value":
        task.loss_kind = args.regression_loss
        task.huber_delta = float(args.huber_delta)
    if records is None:
        return
    arrow = is_arrow(records)  # Arrow-backed: the label column alone, column-wise where it can be
    if args.class_weights is not None and task.label_kind == "class":
        if arrow:  # the distinct labels and their counts, no Python object per row
            distinct, counts = label_counts(records)
            weights = class_weight_values(args.class_weights, names, distinct, pre, counts=counts)
        else:
            weights = class_weight_values(args.class_weights, names, [r["label"] for r in records], pre)
        task.class_weights = torch.tensor(weights, dtype=torch.float32)
    if args.class_weights is not None and task.label_kind == "classes":
        rows = label_records(records) if arrow else records
        task.pos_weight = torch.tensor(pos_weight_values(args.class_weights, names, rows, pre), dtype=torch.float32)
    if task.label_kind == "value" and args.scale_targets:
        values = (np.asarray(label_column(records).to_numpy(zero_copy_only=False), dtype=np.float64) if arrow
                  else np.asarray([float(r["label"]) for r in records], dtype=np.float64))
        std = float(values.std())
        if not std > 0:
            raise ValueError(f"scale_targets=True divides by the standard deviation of the training targets, and "
                             f"every target is {float(values[0])!r}: check the labels, or set scale_targets=False.")
        task.target_mean, task.target_std = float(values.mean()), std


def _mapped(weights: Mapping[Any, Any], names: list[Any]) -> list[float]:
    """A weight per label name from a mapping (keys matched as strings too); 1.0 where it gives none."""
    by_str = {str(k): float(v) for k, v in weights.items()}
    unknown = [k for k in weights if str(k) not in {str(n) for n in names}]
    if unknown:
        raise ValueError(f"class_weights names label(s) {unknown} that the training data does not have; its labels "
                         f"are {names[:20]}. Fix the names, or drop them from the mapping.")
    return [by_str.get(str(n), 1.0) for n in names]


def class_weight_values(weights: Any, names: list[Any], labels: list[Any], pre: Any,
                        counts: list[int] | None = None) -> list[float]:
    """The cross-entropy weight of each class, in id order: a mapping's, or scikit-learn's "balanced" ones.

    `labels` holds each training record's label, or with `counts` each distinct label once and `counts`
    how many records hold it (the same weights).
    """
    if isinstance(weights, Mapping):
        return _mapped(weights, names)
    per_label = np.ones(len(labels), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    totals = np.bincount([pre.label_id(v) for v in labels], weights=per_label, minlength=len(names))
    _require_examples(totals, names, "no training example")
    return (int(per_label.sum()) / (len(names) * totals)).tolist()  # compute_class_weight("balanced")


def pos_weight_values(weights: Any, names: list[Any], records: list[dict[str, Any]], pre: Any) -> list[float]:
    """BCE's `pos_weight` of each label, in id order: a mapping's, or negatives / positives ("balanced")."""
    if isinstance(weights, Mapping):
        return _mapped(weights, names)
    positives = np.zeros(len(names))
    for r in records:
        for j in {pre.label_id(v) for v in r["label"]}:
            positives[j] += 1
    _require_examples(positives, names, "no positive training example")
    return ((len(records) - positives) / positives).tolist()


def _require_examples(counts: np.ndarray, names: list[Any], what: str) -> None:
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"class_weights='balanced' cannot weight label(s) {empty[:10]}: they have {what}. Add "
                         "examples of them, or pass a mapping {label: weight} instead.")


def best_thresholds(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per label, the probability threshold that maximizes its F1 (predicted: prob >= threshold); ties go
    to the threshold nearest 0.5, and a label with no positive example keeps 0.5."""
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for j in range(probs.shape[1]):
        positives = truth[:, j].sum()
        if positives == 0:
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        p, y = probs[order, j], truth[order, j]
        tp = np.cumsum(y)
        last = np.r_[np.flatnonzero(p[1:] != p[:-1]), len(p) - 1]  # cut after each distinct probability
        f1 = 2 * tp[last] / (last + 1 + positives)
        best = np.flatnonzero(np.isclose(f1, f1.max()))
        out[j] = float(p[last][best[np.argmin(np.abs(p[last][best] - DEFAULT_THRESHOLD))]])
    return out


@torch.inference_mode()
def tune_thresholds(task: Any, args: Any, run: Any, features: list[dict[str, Any]] | None) -> None:
    """With `tune_thresholds`, set `task.thresholds` from the validation `features` (`best_thresholds`)."""
    if not (args.tune_thresholds and task.label_kind == "classes"):
        return
    if not features:
        raise ValueError("tune_thresholds=True picks thresholds on the validation data: pass it to fit(train, "
                         "validation), or set tune_thresholds=False.")
    from ..data.collate import feature_lengths, gather, sequential_batches, to_device

    pre, model = run.preprocessor, run.model
    model.eval()
    probs, truth = [], []
    for idx in sequential_batches(len(features), run.batch_size, feature_lengths(pre, features)):
        batch = to_device(pre.collate(gather(features, idx)), run.device)
        with run.autocast():
            probs.append(task.forward(model, batch).logits.float().sigmoid().cpu())
        truth.append(batch["labels"].cpu())
    task.thresholds = torch.tensor(best_thresholds(torch.cat(probs).numpy(), torch.cat(truth).numpy()),
                                   dtype=torch.float32)
    task.thresholds_tuned = True


def last_linear(model: torch.nn.Module, outputs: int) -> str:
    """The name of the head's last `Linear` layer with `outputs` outputs (`classifier`, `classifier.out_proj`, `score`)."""
    found = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == outputs]
    if not found:
        raise ValueError(f"No linear layer with {outputs} output(s) found in the model's head, so the target "
                         "scaling cannot be folded into it: set scale_targets=False.")
    return found[-1]


def saved_weights(model: torch.nn.Module, task: Any, pre: Any, weights: dict[str, torch.Tensor] | None
                  ) -> dict[str, torch.Tensor] | None:
    """What `save` writes (`weights`: FSDP's full state dict, or None): the model's config gets the thresholds
    (multi-label), and the target scaling is folded into the head (regression: then a state dict with
    ``W' = std * W``, ``b' = std * b + mean`` comes back; the live model is not changed)."""
    if task.label_kind == "classes":
        values = task.threshold_tensor(len(pre.label_names or []), torch.device("cpu")).tolist()
        setattr(model.config, THRESHOLDS_KEY, {str(n): round(float(t), 6) for n, t in zip(pre.label_names, values)})
    if task.label_kind != "value" or (task.target_mean, task.target_std) == (0.0, 1.0):
        return weights
    name = last_linear(model, 1)
    state = dict(weights if weights is not None else model.state_dict())
    weight, bias = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if weight is None or bias is None:
        raise ValueError(f"The head's last layer ({name}) has no bias, so the target mean cannot be folded into it: "
                         "set scale_targets=False.")
    state[f"{name}.weight"] = weight * task.target_std
    state[f"{name}.bias"] = bias * task.target_std + task.target_mean
    setattr(model.config, SCALING_KEY, {"mean": task.target_mean, "std": task.target_std, "folded_into": name})
    return state


__all__ = ["SCALING_KEY", "THRESHOLDS_KEY", "best_thresholds", "check_task_settings", "class_weight_values",
           "configure_task", "head_labels", "pos_weight_values", "saved_weights", "tune_thresholds",
           "validate_task_args"]
