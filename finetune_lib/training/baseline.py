"""Before and after: the base model scored on the same records, with the same metrics and settings.

`FineTuner.evaluate(test, baseline=True)` evaluates the base model first, then the fine-tuned one
(`finetune_lib.training.evaluation.evaluate_with_baseline`), and returns the fine-tuned results with the base model's beside them as ``baseline/<key>``
(``baseline/loss``, ``baseline/bleu``, ``baseline/<slice>/<metric>``, ...). The base model is
found without touching the trained weights:

1. with adapters (a peft `PeftModel`): the same model inside ``model.disable_adapter()``;
2. a model that was not trained in this session: the model itself;
3. a model object given to `FineTuner`: a CPU copy of it taken when `fit` started
   (`keep_base_copy`; it costs the model's size in memory: give a folder or hub id to avoid it);
4. a hub id, a folder or a GGUF file: loaded again with `load_model` (a classification head built
   afresh from the run's seed is the head training started from), for the time of the evaluation.

The same `MetricSuite` runs twice, so a custom metric is compared like the built-in ones. With text
metrics, each row of ``last_artifacts["generations"]`` holds the base model's text as ``baseline``;
the base run's other artifacts (a confusion matrix, signatures) are in ``last_artifacts["baseline"]``.

Example:
    >>> results = tuner.evaluate(splits.test, baseline=True)                        # doctest: +SKIP
    >>> results["bleu"], results["baseline/bleu"]                                   # doctest: +SKIP
    (41.2, 3.7)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..reporting.run_info import BASELINE_PREFIX, split_baseline

__all__ = ["BASELINE_PREFIX", "BaseSource", "is_adapter_model", "keep_base_copy", "split_baseline"]

def is_adapter_model(model: Any) -> bool:
    """True for a peft model (adapters that can be switched off with `disable_adapter()`)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "disable_adapter", None))


def keep_base_copy(source: Any, model: torch.nn.Module, kept: torch.nn.Module | None = None) -> torch.nn.Module | None:
    """A CPU copy of the model before training, when the base cannot be had otherwise: the model was
    given as an object (not a folder or hub id to load again) and has no adapters. `kept`, the copy
    of an earlier `fit`, is kept (a second `fit` starts from trained weights)."""
    if kept is not None or not isinstance(source, torch.nn.Module) or is_adapter_model(model):
        return kept
    return copy.deepcopy(model).to("cpu")


@dataclass
class BaseSource:
    """Where the base model of a run comes from (see the module's docstring for the order).

    Attributes:
        source: the `FineTuner`'s model source: a hub id, a folder, a GGUF file or a model object.
        task: the task object (its `auto_class` loads the model again).
        seed: the run's seed (a classification head built afresh is the one training started from).
        copy: the CPU copy of a model-object source taken before training (`keep_base_copy`).
        trained: whether the model was trained in this session (when not, it is the base itself).
    """

    source: Any
    task: Any
    seed: int = 0
    copy: torch.nn.Module | None = None
    trained: bool = True

    @contextlib.contextmanager
    def open(self, model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
        """The base model on `device` for the time of the block; `model` (the fine-tuned one) is not changed."""
        if is_adapter_model(model):  # 1. adapters off
            with model.disable_adapter():
                yield model
            return
        if not self.trained:  # 2. never trained here
            yield model
            return
        if isinstance(self.source, torch.nn.Module):  # 3. the copy taken before training
            if self.copy is None:
                raise RuntimeError("The base model is not known: the model was given as an object and no copy of it "
                                   "was kept before training. Pass the model as a folder or hub id, or evaluate a "
                                   "copy of the original model with a FineTuner that is not fitted.")
            base = self.copy
            try:
                yield _ready(base, model, device)
            finally:
                base.to("cpu")
            return
        from .loading import load_model  # 4. loaded again

        with torch.random.fork_rng(devices=[]):  # a fresh head from the run's seed; the user's RNG left alone
            torch.random.default_generator.manual_seed(self.seed)
            base = _ready(load_model(self.source, self.task, _labels(model, self.task)), model, device)
        try:
            yield base
        finally:
            del base


def _labels(model: torch.nn.Module, task: Any) -> dict[str, Any] | None:
    if not getattr(task, "has_classes", False):
        return None
    config = model.config
    return {"id2label": dict(config.id2label), "label2id": dict(config.label2id), "observed": []}


def _ready(base: torch.nn.Module, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`base` on `device`, in eval mode, with the fine-tuned model's pad token and embedding rows
    (tokens added for a chat template get new rows, as training gave the fine-tuned model)."""
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = getattr(model.config, "pad_token_id", None)
    rows = model.get_input_embeddings().num_embeddings if model.get_input_embeddings() is not None else None
    emb = base.get_input_embeddings()
    if rows is not None and emb is not None and emb.num_embeddings < rows:
        base.resize_token_embeddings(rows)
    return base.to(device).eval()
