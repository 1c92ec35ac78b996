"""What differs per task: the model class, the forward pass, the loss and how targets are counted.

Three tasks: "classification" (sequence classification head), "causal_lm" (decoder-only) and
"seq2seq" (encoder-decoder). The loss is always a *sum* over targets divided by a normalizer the
loop passes in: the number of target tokens (LM tasks) or examples (classification) in the whole
accumulated batch. That makes 4 micro-batches of 2 give exactly the gradient of one batch of 8,
whatever the padding or the lengths.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

IGNORE_INDEX = -100


@dataclass
class Task:
    """Base task. `label_smoothing` is read by the loss (the LabelSmoothing regularizer sets it)."""

    name: str = ""
    label_smoothing: float = 0.0
    auto_class: Any = None
    generates: bool = False

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """Run the model without its own loss (we compute ours, normalized over the accumulated batch)."""
        return model(**{k: v for k, v in batch.items() if k != "labels"})

    def aligned(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels such that `logits[..., i, :]` predicts `labels[..., i]`."""
        return logits, labels

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Targets in a micro-batch: tokens that carry a loss, or examples."""
        raise NotImplementedError

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """Summed cross-entropy over the targets (float32 whatever the autocast dtype).

        `smoothing=False` gives the plain loss (evaluation) even when label smoothing is on.
        """
        return self.aligned_loss_sum(*self.aligned(logits, labels), smoothing=smoothing)

    def aligned_loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """`loss_sum` for logits and labels already aligned by `aligned`."""
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
            reduction="sum", label_smoothing=self.label_smoothing if smoothing else 0.0,
        )

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], normalizer: int) -> torch.Tensor:
        """Loss of a micro-batch, divided by the targets of the whole accumulated batch."""
        return self.loss_sum(outputs.logits, batch["labels"]) / max(1, normalizer)


class ClassificationTask(Task):
    def __init__(self) -> None:
        super().__init__("classification", auto_class=AutoModelForSequenceClassification)

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["labels"].shape[0])


class CausalLMTask(Task):
    def __init__(self) -> None:
        super().__init__("causal_lm", auto_class=AutoModelForCausalLM, generates=True)

    def aligned(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # shift the labels left instead of slicing the logits: no copy of the [B, T, V] logits
        return logits, F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class Seq2SeqTask(Task):
    def __init__(self) -> None:
        super().__init__("seq2seq", auto_class=AutoModelForSeq2SeqLM, generates=True)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if "decoder_input_ids" not in inputs:
            inner = getattr(model, "module", model)  # the model itself, also under DistributedDataParallel
            inputs["decoder_input_ids"] = inner.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return model(**inputs)

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())


TASKS = {"classification": ClassificationTask, "causal_lm": CausalLMTask, "seq2seq": Seq2SeqTask}


def get_task(name: str) -> Task:
    """The task object for a name; a clear error for an unknown one."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Choose one of: {', '.join(TASKS)}.")
    return TASKS[name]()


@torch.inference_mode()
def generate_texts(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int = 16,
                   max_new_tokens: int = 64, time_budget_s: float | None = None,
                   autocast: Any = None) -> list[str]:
    """Generate a continuation for each prompt, in batches, with left padding and the KV cache.

    The prompt is stripped from the output of decoder-only models. Prompts not reached within
    `time_budget_s` get an empty string, with a warning saying how many.
    """
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left" if not is_encoder_decoder else "right"
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start, outputs = time.perf_counter(), []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(prompts), batch_size):
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                missing = len(prompts) - len(outputs)
                warnings.warn(f"Generation time budget of {time_budget_s}s spent; {missing} prompts left "
                              "without output (empty strings). Raise time_budget_s or lower max_new_tokens.",
                              stacklevel=2)
                outputs.extend([""] * missing)
                break
            chunk = prompts[i: i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with autocast() if autocast is not None else _null():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=pad_id)
            if not is_encoder_decoder:
                out = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


class _null:
    def __enter__(self) -> None: ...
    def __exit__(self, *a: Any) -> None: ...
