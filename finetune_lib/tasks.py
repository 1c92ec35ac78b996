"""What differs per task: the model class, the forward pass, the loss and how targets are counted.

Three tasks: "classification" (sequence classification head), "causal_lm" (decoder-only) and
"seq2seq" (encoder-decoder); "multilabel_classification" and "regression" (a sequence head too) live
in `finetune_lib.sequence_tasks`, "token_classification" (one tag per word) in
`finetune_lib.token_task`. The loss is always a *sum* over targets divided by a normalizer the
loop passes in: the number of target tokens (LM tasks) or examples (classification) in the whole
accumulated batch. That makes 4 micro-batches of 2 give exactly the gradient of one batch of 8,
whatever the padding or the lengths.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from .generation import check_generation_settings, cut_at_stop, seeded_sampling
from .generation import stop_token_ids as find_stop_ids
from .sequence_tasks import MultiLabelTask, RegressionTask
from .task_base import IGNORE_INDEX, Task  # the base lives apart, so task modules build on it without a cycle
from .token_task import TokenClassificationTask

log = logging.getLogger(__name__)


class ClassificationTask(Task):
    def __init__(self) -> None:
        super().__init__("classification", auto_class=AutoModelForSequenceClassification, label_kind="class",
                         metric_inputs=("classes", "logits"))

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["labels"].shape[0])

    def aligned_loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """Summed cross-entropy; in training (`smoothing=True`) each example weighted by its class's weight
        (`class_weights`), so the loss is ``sum_i w[y_i] * CE_i / examples``. Evaluation's loss stays plain."""
        if self.class_weights is None or not smoothing:
            return super().aligned_loss_sum(logits, labels, smoothing)
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights.to(logits.device), reduction="sum",
                               label_smoothing=self.label_smoothing)


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


TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask, "causal_lm": CausalLMTask, "seq2seq": Seq2SeqTask,
    "multilabel_classification": MultiLabelTask, "regression": RegressionTask,
    "token_classification": TokenClassificationTask,
}


def get_task(name: str) -> Task:
    """The task object for a name; a clear error for an unknown one."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Choose one of: {', '.join(TASKS)}.")
    return TASKS[name]()


@dataclass
class GenerationBudget:
    """A time budget for generation, shared by several `generate_texts` calls (e.g. all the batches
    of one evaluation), and what it allowed.

    Only the time spent inside generation counts. The budget is checked before each batch and a
    batch, once started, runs to the end: it can be overshot by up to one batch's generation time,
    and a positive budget always generates the first batch.

    Attributes:
        seconds: the budget in seconds; None for no limit.
        spent: seconds spent generating so far.
        generated: prompts generated so far.
        skipped: prompts given an empty string because the budget had run out.

    Example:
        >>> budget = GenerationBudget(seconds=60.0)
        >>> budget.exhausted, budget.generated, budget.skipped
        (False, 0, 0)
    """

    seconds: float | None = None
    spent: float = 0.0
    generated: int = 0
    skipped: int = 0

    @property
    def exhausted(self) -> bool:
        """True once the seconds are spent."""
        return self.seconds is not None and self.spent >= self.seconds


def _prompt_batch(tokenizer: Any, prompts: list[str], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of `prompts`, padded on the left (decoder-only) or the right.

    An empty prompt (no tokens) starts from BOS (EOS when the tokenizer has no BOS), as an
    unconditional generation does: a row of padding only has nothing to attend to.
    """
    from .data.collate import collate

    rows = tokenizer(prompts, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if any(not r for r in rows) and start is None:
        raise ValueError("An empty prompt needs a start token, and the tokenizer has neither a BOS nor an EOS "
                         "token: give every record a non-empty prompt, or set tokenizer.bos_token.")
    rows = [list(r) if r else [start] for r in rows]
    return collate([{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows], pad_id,
                   padding_side="left" if left else "right")


@torch.inference_mode()
def generate_texts(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int = 16,
                   max_new_tokens: int = 64, time_budget_s: float | None = None,
                   budget: GenerationBudget | None = None, autocast: Any = None, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   stop_token_ids: Sequence[int] | None = None) -> list[str]:
    """Generate a continuation for each prompt, in batches, with the KV cache: greedy by default
    (unless the model's `generation_config` sets e.g. `num_beams`), or sampled with `do_sample=True`.

    Decoder-only models get left-padded prompts (so every row's last prompt token sits at the same
    place and generation continues right after it), with the attention mask; the prompt is
    stripped from their output. Generation stops at EOS and at the chat template's end-of-turn
    token (`finetune_lib.generation.stop_token_ids`); the text ends before it. Each text is decoded
    without special tokens and with surrounding whitespace stripped; it holds at most
    `max_new_tokens` tokens. The tokenizer is not changed (its `padding_side` included) and the
    model's train/eval mode is restored.

    Sampling draws from the logits divided by `temperature`, cut to the nucleus `top_p` (no top-k
    cut), from torch's generator seeded with `seed` at the start of the call: the same call gives
    the same texts, and torch's global random state is put back afterwards.

    Args:
        model: a causal LM or an encoder-decoder model.
        tokenizer: its tokenizer (a pad token, or else an EOS token, pads the batches).
        prompts: the prompts.
        batch_size: prompts generated together.
        max_new_tokens: the most tokens generated per prompt.
        time_budget_s: seconds for this call; prompts of the batches not started within it get an
            empty string, and a warning (logger ``finetune_lib``) says how many. None: no limit.
        budget: instead of `time_budget_s`, a `GenerationBudget` shared with other calls; it
            counts what was generated and skipped, and its owner reports it (no warning here).
        autocast: a context-manager factory to generate under (mixed precision).
        do_sample: sample instead of greedy decoding.
        temperature: with `do_sample`, divides the logits (1.0: the model's distribution).
        top_p: with `do_sample`, the nucleus kept (1.0: every token).
        seed: with `do_sample`, the seed of the sampling.
        stop_token_ids: the ids generation stops at; default `stop_token_ids(tokenizer, model)`
            (EOS and end-of-turn tokens).

    Returns:
        One string per prompt, in order.
    """
    if budget is not None and time_budget_s is not None:
        raise ValueError("Pass time_budget_s or budget, not both.")
    if time_budget_s is not None and not time_budget_s >= 0:
        raise ValueError(f"time_budget_s must be >= 0 seconds (or None for no limit), got {time_budget_s!r}.")
    owned = budget is None
    budget = budget if budget is not None else GenerationBudget(time_budget_s)
    check_generation_settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              do_sample=do_sample, seed=seed)
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad prompts with: "
                         "set tokenizer.pad_token.")
    stops = list(stop_token_ids) if stop_token_ids is not None else find_stop_ids(tokenizer, model)
    options: dict[str, Any] = {"do_sample": False}
    if do_sample:  # temperature and nucleus only; the model's top-k default would cut the distribution too
        options = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with seeded_sampling(seed, device) if do_sample else contextlib.nullcontext():
            for i in range(0, len(prompts), batch_size):
                # 1. stop before a batch once the budget is spent: the rest get empty strings
                if budget.exhausted:
                    break
                started = _clock()
                chunk = prompts[i: i + batch_size]
                enc = {k: v.to(device) for k, v in _prompt_batch(tokenizer, chunk, pad_id,
                                                                 not is_encoder_decoder).items()}
                # 2. decode (greedy or seeded sampling) with the KV cache, until EOS or end-of-turn
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = model.generate(**enc, max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=pad_id,
                                         eos_token_id=stops or None, **options)
                # 3. decoder-only: drop the prompt (every row's prompt ends at the same column); then end
                # each row before its first stop token (an encoder-decoder's row starts with its start token)
                if not is_encoder_decoder:
                    out = out[:, enc["input_ids"].shape[1]:]
                rows = cut_at_stop(out.cpu(), stops, start=1 if is_encoder_decoder else 0)
                outputs.extend(t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True))
                budget.spent += _clock() - started
                budget.generated += len(chunk)
    finally:
        model.train(was_training)
    missing = len(prompts) - len(outputs)
    if missing:
        budget.skipped += missing
        outputs.extend([""] * missing)
        if owned:
            log.warning("Generation time budget of %gs spent after %d of %d prompts; the other %d got empty "
                        "strings. Raise the budget, lower max_new_tokens or generate fewer prompts.",
                        budget.seconds, len(prompts) - missing, len(prompts), missing)
    return outputs


def _clock() -> float:
    """Seconds of a monotonic clock (a function, so tests can replace it)."""
    return time.perf_counter()
