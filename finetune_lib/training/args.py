"""`TrainingArgs`: the settings of a run, each a keyword argument of `FineTuner`, checked up front."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .optim import check_schedule
from .setting_checks import check_numbers
from .task_settings import validate_task_args

#: settings FineTuner took before, and what to use instead
REMOVED_SETTINGS = {
    "weight_decay": "set weight decay once, with regularizers=[WeightDecay(0.01)] "
                    "(from finetune_lib.regularizers import WeightDecay).",
    "cpu_memory_reuse": "folded into cpu_speedups=True (opt-in: malloc tuning while fit/evaluate/predict run, and "
                        "reused embedding gradients); the frozen-weight bf16 casts are now always on.",
    "cpu_fast_dropout": "folded into cpu_speedups=True (opt-in counter-based dropout masks); the default is torch's "
                        "own dropout.",
}


@dataclass
class TrainingArgs:
    """Settings of a run; each is a keyword argument of `FineTuner`.

    Attributes:
        epochs: passes over the training data (ignored when `max_steps` is set).
        max_steps: optimizer steps to take; overrides `epochs`.
        batch_size: examples per optimizer step (the effective batch).
        gradient_accumulation: micro-batches per step; each holds batch_size / gradient_accumulation.
        learning_rate: peak learning rate of AdamW.
        schedule: "linear", "cosine" or "constant" after warmup, or your own function
            `(step, total_steps) -> learning-rate multiplier` (which then shapes warmup too:
            warmup_ratio and warmup_steps must stay 0).
        warmup_ratio: fraction of the steps spent warming up (used when warmup_steps is 0).
        warmup_steps: steps of linear warmup.
        max_grad_norm: clip the gradient norm to this (None or 0: no clipping).
        precision: "auto", "bf16", "fp16" or "fp32".
        group_by_length: batch examples of similar length together (less padding), order shuffled.
        eval_every: evaluate every N steps, or "epoch".
        save_every: checkpoint every N steps, or "epoch" (only with an output_dir).
        log_every: log the training loss every N steps.
        keep_checkpoints: keep the newest K checkpoints (K >= 1), or None to keep them all.
        eval_batch_size: examples per evaluation batch (default: 2 x batch_size).
        max_new_tokens: tokens to generate for LM predictions and text metrics (generation stops earlier
            at EOS or at the chat template's end-of-turn token, e.g. ``<|im_end|>``).
        temperature: divides the logits before sampling (with `do_sample=True`; greedy decoding ignores
            it); 1.0 keeps the model's distribution.
        top_p: with `do_sample=True`, sample from the smallest set of tokens whose probability reaches
            top_p (nucleus sampling; 1.0 keeps them all; no top-k cut is applied).
        do_sample: sample instead of decoding greedily (the default, False). Sampling is seeded with
            `seed` (the same seed gives the same texts) and leaves torch's global random state as it
            was. `evaluate` (text metrics) and `predict` use these settings; `predict` can override
            them per call.
        generation_time_budget: seconds of generation allowed in one evaluation (for text metrics
            such as BLEU; per process under torchrun); None (default): no limit. Checked before each
            generation batch, so it can be overshot by one batch. When it runs out, the prompts left
            get empty outputs, which the text metrics score as they are (never dropped, so every
            metric covers the same examples); the results then hold `generated_fraction` < 1 and a
            warning says how many were generated.
        seed: seeds Python, NumPy and torch, the data order, and sampling (`do_sample=True`).
        on_nonfinite: "stop" (default) raises at a NaN/inf loss or gradient before the weights change;
            "skip" drops that step and goes on (counted in the log as `train/skipped_steps`).
        distributed: how the model is spread over processes under `torchrun` (WORLD_SIZE > 1; ignored
            in a single process): "auto" (DDP), "ddp" (a full copy per process), or "fsdp" (weights,
            gradients and optimizer state sharded per transformer block, for models that do not fit).
        cpu_speedups: on a CPU, add the opt-in techniques of `finetune_lib.speedups` (False, the
            default, keeps torch's semantics and changes nothing process-wide): glibc's malloc keeps
            freed memory during `fit`, `evaluate` and `predict` (process-wide while they run, glibc's
            defaults set back after), large embedding tables write their gradient into a reused buffer
            (autograd's hooks and `torch.autograd.grad` do not see it; not under DDP/FSDP), and dropout
            and attention dropout draw counter-based masks (same keep rate and scaling, reproducible
            under `seed` and resume, not torch's masks). Measured on MiniLM: the memory ones 15-20%
            per epoch, the dropout ones 1.02-1.07x per step; see docs/topics/cpu-speed.md for each
            one's gain and caveats.
        compile: run the training forward and backward through `torch.compile` (TorchInductor). The
            first steps are slower while it compiles (tens of seconds on a CPU); best on a GPU with
            fixed shapes such as packed rows (`Preprocessor(pack=True)`), where each new shape
            otherwise compiles again. The model itself is not replaced: `state_dict` keys,
            checkpoints, `save()` and resume are unchanged, and evaluation, `predict` and generation
            run eagerly. On a CPU it replaces the CPU patches (the frozen-weight casts, the SDPA kernel
            choice, and the model patches of `cpu_speedups`): the compiler fuses
            dropout itself. Needs a C++ compiler on a CPU and Triton on a GPU (checked when the
            `FineTuner` is built). Works under DDP (compiled before wrapping); refused under FSDP
            and with `LayerFreezer(cache_prefix=True)`. See `finetune_lib.training.compiling`.
        gradient_checkpointing: recompute each block's activations during backward instead of keeping
            them (transformers' activation checkpointing, non-reentrant), for the length of `fit`
            only: the model is left as it was. Less memory (activations of one block at a time
            instead of all), about a third more compute per step; the same gradients. Works with a
            `LayerFreezer` (the frozen prefix still runs without autograd) and with adapters.
        class_weights: classification and multi-label only: "balanced" (scikit-learn's
            ``compute_class_weight("balanced")`` on the training labels for the cross-entropy; for
            multi-label, BCE's ``pos_weight`` = negatives / positives per label), a mapping
            ``{label: weight}`` (positive; 1.0 for labels it leaves out), or None (unweighted). The
            training loss stays a sum over examples divided by the examples; the evaluation loss is
            unweighted. See `finetune_lib.training.task_settings`.
        threshold: multi-label only: the probability at or above which a label is predicted (0.5).
        tune_thresholds: multi-label only: after `fit`, set each label's threshold to the one that
            maximizes its F1 on the validation data (needs validation data). Thresholds are saved in
            ``config.json`` (``finetune_lib_thresholds``) and in the model card; `predict` and
            `evaluate` apply them, `pipeline()` does not.
        scale_targets: regression only: train the head on standardized targets (mean and standard
            deviation of the training targets); `save` folds them into the head, so the saved model
            predicts the targets' units. The training and validation loss are in standardized units,
            the metrics in the targets' units.
        regression_loss: regression only: "mse" (squared error) or "huber".
        huber_delta: with ``regression_loss="huber"``, where the loss turns from quadratic to linear.
    """

    epochs: float = 3
    max_steps: int | None = None
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float = 5e-5
    schedule: str | Callable[[int, int], float] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    precision: str = "auto"
    group_by_length: bool = True
    eval_every: int | str = "epoch"
    save_every: int | str = "epoch"
    log_every: int = 10
    keep_checkpoints: int | None = 2
    eval_batch_size: int | None = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = False
    generation_time_budget: float | None = None
    seed: int = 0
    on_nonfinite: str = "stop"
    distributed: str = "auto"
    cpu_speedups: bool = False
    compile: bool = False
    gradient_checkpointing: bool = False
    class_weights: str | Mapping[Any, float] | None = None
    threshold: float = 0.5
    tune_thresholds: bool = False
    scale_targets: bool = False
    regression_loss: str = "mse"
    huber_delta: float = 1.0

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainingArgs:
        """The settings from `FineTuner`'s keyword arguments, validated; unknown or removed names refused
        with what to use instead."""
        moved = [f"{name}: {REMOVED_SETTINGS[name]}" for name in settings if name in REMOVED_SETTINGS]
        if moved:
            raise TypeError("Setting(s) no longer taken by FineTuner (see CHANGELOG.md):\n  " + "\n  ".join(moved))
        unknown = set(settings) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Unknown FineTuner setting(s) {sorted(unknown)}. Known: "
                            f"{', '.join(cls.__dataclass_fields__)}.")
        args = cls(**settings)
        args.validate()
        return args

    def validate(self) -> None:
        check_numbers(self)  # every number finite, of the right kind and in range, or the fix
        validate_task_args(self)  # class_weights, regression_loss
        def positive(name: str, value: Any, integer: bool = False) -> None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or (integer and int(value) != value):
                kind = "a positive integer" if integer else "a positive number"
                raise ValueError(f"{name} must be {kind}, got {value!r}.")

        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size, True)
        positive("gradient_accumulation", self.gradient_accumulation, True)
        positive("learning_rate", self.learning_rate)
        positive("log_every", self.log_every, True)
        if self.max_steps is not None:
            positive("max_steps", self.max_steps, True)
        if self.batch_size % self.gradient_accumulation:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of gradient_accumulation "
                             f"({self.gradient_accumulation}): each micro-batch holds batch_size / gradient_accumulation.")
        if not 0 <= self.warmup_ratio < 1 or self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0, and warmup_ratio in [0, 1).")
        check_schedule(self.schedule, self.warmup_steps, self.warmup_ratio)
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}.")
        if self.distributed not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"distributed must be 'auto' (DDP under torchrun), 'ddp' or 'fsdp' (shard the model "
                             f"across processes), got {self.distributed!r}.")
        for name in ("cpu_speedups", "compile", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        budget = self.generation_time_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
            raise ValueError(f"generation_time_budget must be a positive number of seconds (e.g. 600), or None for "
                             f"no limit; got {budget!r}.")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value != "epoch" and value is not None:
                positive(name, value, True)
