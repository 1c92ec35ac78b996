"""`FineTuner`: the training core. `fit` is one loop that reads top to bottom; everything else
(regularizers, the layer freezer, loggers, progress bars, user code) attaches through events."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.collate import gather, to_device
from ..data.preprocessor import Preprocessor
from ..data.report import build_report
from ..events import Callback, CallbackList, TrainState
from ..metrics.suite import suite_for_task
from ..regularizers.weight_decay import configured_weight_decay
from ..tasks import Task, get_task
from .args import TrainingArgs
from .baseline import BaseSource, keep_base_copy
from .callbacks import ProgressBar
from .checkpoint import check_finite_model
from .compiling import check_compile, compile_failure, for_training
from .cpu_paths import CpuPaths
from .data_order import training_order, training_records
from .distributed import DistributedContext, main_first
from .evaluation import EvalSetup, evaluate_model, predict_records
from .generations import as_predict_records, write_generations
from .guards import (
    DeviceFiniteGuard,
    StopSignals,
    deferred_nonfinite,
    gradient_norm,
    is_out_of_memory,
    split_after_out_of_memory,
    step_is_finite,
)
from .loading import (
    as_records,
    check_overlap,
    check_token_ids,
    fit_labels,
    load_model,
    load_tokenizer,
    max_positions,
)
from .loggers import make_loggers
from .model_setup import ModelSetup
from .optim import (
    Schedule,
    add_parameter_groups,
    build_optimizer,
    check_optimizer_factory,
    clip_gradients,
    parameter_groups,
)
from .precision import resolve_precision
from .resume import fingerprint as run_fingerprint
from .resume import restore, write_checkpoint
from .rundir import check_output_dir, prepare_output_dir
from .runlock import holds_run_lock
from .task_settings import check_task_settings, configure_task, head_labels, saved_weights, tune_thresholds
from .tracking import log_evaluation

log = logging.getLogger(__name__)


class FineTuner:
    """Fine-tunes a pretrained model on records.

    Args:
        model: a hub id or a local folder (loaded with `from_pretrained`, with the right head for the
            task and the labels found in the data), a path to a `.gguf` file (model and tokenizer read
            from it, de-quantized to float32; needs gguf), or a model object.
        task: "classification", "causal_lm", "seq2seq", "multilabel_classification", "regression", "token_classification".
        tokenizer: a tokenizer or its id/folder; by default loaded from `model`.
        preprocessor: a `Preprocessor` (default: one with safe cleaning and the model's length limit).
        freezer: a `LayerFreezer`, to train only the last blocks.
        adapter: a `finetune_lib.adapters.LoRA`, to train LoRA adapters instead of the base weights (in the
            last N blocks with `LayerFreezer(train_last=N)`, else in every block); needs peft.
        regularizers: `Regularizer` objects (weight decay, dropout, early stopping, ...).
        metrics: a `MetricSuite`; by default accuracy and macro F1 (classification), or perplexity and
            token accuracy (LM tasks).
        callbacks: your own `Callback` objects.
        output_dir: where the log and checkpoints go; None keeps everything in memory.
        overwrite: replace a run already in `output_dir` (only this library's files are removed).
        device: "cpu", "cuda", ...; default: CUDA when available.
        progress: show progress bars (None: only in a terminal or Jupyter).
        loggers: where logged records go: "jsonl", "csv", "tensorboard" (with an output_dir), "live" (a plot
            in Jupyter), "wandb", "mlflow" (WandbLogger/MLflowLogger for options), or `Callback` objects.
        optimizer: your optimizer, as a factory taking the parameter groups (each with its `params`,
            `lr` and `weight_decay`) and returning a `torch.optim.Optimizer`, e.g.
            ``lambda groups: torch.optim.SGD(groups, momentum=0.9)``; default: AdamW (fused).
        **settings: the fields of `TrainingArgs` (epochs, batch_size, learning_rate, ...).

    Example:
        >>> tuner = FineTuner("path/to/model", task="classification", epochs=2, output_dir="runs/a")
        >>> tuner.fit(splits.train, splits.validation)
        >>> tuner.evaluate(splits.test)
        {'loss': 0.21, 'accuracy': 0.93, 'f1': 0.93}
    """

    def __init__(self, model: Any, task: str = "classification", *, tokenizer: Any = None,
                 preprocessor: Preprocessor | None = None, freezer: Any = None, adapter: Any = None,
                 regularizers: Sequence[Callback] = (), metrics: Any = None, callbacks: Sequence[Callback] = (),
                 output_dir: str | Path | None = None, overwrite: bool = False, device: str | None = None,
                 progress: bool | None = None, loggers: Sequence[str | Callback] = ("jsonl",),
                 optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None, **settings: Any):
        self.args = TrainingArgs.from_settings(settings)  # unknown or removed names refused, values checked
        self.task: Task = check_task_settings(get_task(task), self.args, adapter)  # e.g. class_weights fit the task
        self.model_source, self.tokenizer_source = model, tokenizer
        self.preprocessor = preprocessor if preprocessor is not None else Preprocessor()
        self.freezer, self.adapter = freezer, adapter
        self.regularizers = list(regularizers)
        self.metrics = suite_for_task(metrics, self.task.name)  # the default, or checked against the task now
        self.user_callbacks = list(callbacks)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.overwrite = overwrite
        self.dist = DistributedContext.from_env(self.args.distributed)
        self.device = self.dist.device(device)
        self.precision = resolve_precision(self.args.precision, self.device)
        # new tokens' embeddings, the adapter, checkpointing; peft/gguf missing or QLoRA on a CPU refused here
        self._model_setup = ModelSetup(adapter, freezer, self.task.name, self.device, model)
        # reading a scalar back costs nothing on CPU (and FSDP's sharded norms stay on torch's path)
        self._host_reads_free = self.device.type == "cpu" and not self.dist.fsdp
        self._cpu = CpuPaths.for_run(self.device, self.args)  # fast paths on a CPU (none for GPUs)
        # CUDA without FSDP: the non-finite check stays on the device (FSDP's sharded norms keep the host check)
        self._device_guard = self.device.type == "cuda" and not self.dist.fsdp
        self.dist.check(freezer, [*self.regularizers, *self.user_callbacks], self.precision)  # what DDP/FSDP refuse
        if self.args.compile:  # a missing compiler toolchain, FSDP, a prefix cache
            check_compile(self.device, self.dist.fsdp, freezer)
        self.progress = progress
        self.loggers = list(loggers)
        make_loggers([x for x in self.loggers if isinstance(x, str)], None)  # unknown names fail here
        self.data_summary: Any = None  # sizes and label balance of the data, for the model card
        self.last_results: dict[str, float] | None = None  # the last evaluate() results, for the model card
        self.last_confidence: float | None = None
        self.last_artifacts: dict[str, Any] = {}
        self.weight_decay = configured_weight_decay(self.regularizers)  # WeightDecay(...) is the one way to set it
        self.optimizer_factory = check_optimizer_factory(optimizer)  # your optimizer, or None for AdamW
        self._base_copy: dict[str, torch.Tensor] | None = None  # the weights before fit, for evaluate(baseline=True)
        self.model: torch.nn.Module | None = None
        self._train_model: torch.nn.Module | None = None  # the model, or its DDP wrapper during fit
        self.tokenizer: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: Schedule | None = None
        self.history: list[dict[str, Any]] = []
        self.state: TrainState | None = None
        self._seed_everything(self.args.seed)  # also makes a freshly initialized head reproducible

    # ---- public API -------------------------------------------------------------------------------
    @holds_run_lock  # one run at a time in output_dir: an OS lock until fit returns or raises (rank 0)
    def fit(self, train: Any, validation: Any = None, resume: bool | str = False,
            allow_config_change: bool = False) -> list[dict[str, Any]]:
        """Train on `train`, evaluating on `validation`; returns `history`.

        Args:
            train: training records (a split from DatasetBuilder, a list of dicts, a DataFrame), or a stream
                (`from_hf(..., streaming=True)`, a `StreamingRecords` or `datasets.IterableDataset`; needs max_steps).
            validation: records to evaluate on during training (optional).
            resume: True continues from the newest complete checkpoint in `output_dir`; a path
                continues from that checkpoint.
            allow_config_change: resume even when the settings differ from the checkpoint's.
        """
        args = self.args
        # 1. check the data and the run folder before anything is loaded or written
        train_records, stream = training_records(train, args.max_steps, self.preprocessor, self.task)  # stream: 1st buffer
        val_records = as_records(validation, "validation", self.task.name) if validation is not None else None
        check_overlap(train_records, val_records)  # a warning when validation repeats training texts
        resume_from = check_output_dir(self.output_dir, resume, self.overwrite)
        if self.data_summary is None:
            self.data_summary = build_report({"train": train_records, **({"validation": val_records} if val_records else {})})
        self.dist.init(self.device)
        self.dist.barrier()  # every process has checked the folder before rank 0 writes to it
        # 2. model, tokenizer and labels
        self._setup(train_records, fitting=True)  # class weights and target scaling from train_records
        assert self.model is not None
        model, pre = self.model, self.preprocessor
        self._base_copy = keep_base_copy(self.model_source, model, self._base_copy)  # for evaluate(baseline=True)
        # 3. tokenize once (a stream: a buffer at a time, as it is read); batches are padded per batch
        micro = args.batch_size // args.gradient_accumulation
        data = training_order(pre, train_records, stream, micro, args, model, self.task.name)  # token ids checked
        val_features = pre.encode(val_records, "validation") if val_records else None
        check_token_ids(val_features or [], model, "validation")
        steps_per_epoch = -(-(data.epoch_length or 0) // args.gradient_accumulation)  # 0: a stream's is unknown
        max_steps = args.max_steps or max(1, int(round(steps_per_epoch * args.epochs)))
        # 4. the run folder (refuses to mix runs), callbacks, optimizer and schedule
        fingerprint = run_fingerprint(self.model_source, model, self.task.name, pre, args, self.freezer, self.adapter)
        with main_first(self.dist):
            if self.dist.is_main:
                prepare_output_dir(self.output_dir, resume_from is not None, self.overwrite, fingerprint)
        state = self.state = TrainState(
            model=model, args=args, task=self.task, tokenizer=self.tokenizer, output_dir=self.output_dir,
            is_main_process=self.dist.is_main, history=self.history, max_steps=max_steps,
            weight_decay=self.weight_decay, parameter_adder=self.add_trainable_parameters)
        state.extra["batches_per_epoch"] = data.epoch_length or 0
        events = CallbackList(self._callbacks(state))
        events.emit("setup", state)  # plugins set weight decay and label smoothing here, through the state
        self.weight_decay, self.task.label_smoothing = state.weight_decay, state.label_smoothing
        if self.freezer is not None:
            self.freezer.apply(model)
        self._model_setup.after_freeze(model)  # embeddings grown for new tokens train, under a freezer too
        model.train()
        # torch.compile(model) with compile=True (same parameters), then DDP over the trainable ones, or FSDP
        self._train_model = self.dist.wrap(for_training(model, args.compile), self.device)
        groups = parameter_groups(model, args.learning_rate, self.weight_decay, self._lr_scale())
        self.optimizer = state.optimizer = build_optimizer(groups, args.learning_rate, self.device,
                                                           self.optimizer_factory)
        warmup = args.warmup_steps or int(args.warmup_ratio * max_steps)
        self.schedule = state.scheduler = Schedule(self.optimizer, args.schedule, warmup, max_steps)
        scaler = self.precision.scaler()
        # 5. resume: weights, callbacks (they may add parameter groups), optimizer, RNG, data position
        if resume_from is not None:
            restore(state, resume_from, events, scaler, fingerprint, allow_config_change, self.dist)
        packed = getattr(pre.stats.get("train"), "packed_rows", None) is not None
        log.info("training %d steps (%s per epoch), %s %s, micro-batch %d x %d", max_steps, steps_per_epoch or "?",
                 data.size or "a stream of", "packed rows" if packed else "examples", micro, args.gradient_accumulation)
        events.emit("fit_start", state)
        running_loss, running_windows, grad_norm = torch.zeros((), device=self.device), 0, None
        # no host read per step where reads cost a sync (CUDA): the device-side check
        guard = (DeviceFiniteGuard(self.device) if self._device_guard and not scaler
                 and DeviceFiniteGuard.usable(self.optimizer) else None)
        params = list(model.parameters())  # for clipping: the model's order, listed once (a per-step walk costs ~1%)
        # on a CPU: frozen weights cast once; with cpu_speedups the techniques of finetune_lib.speedups (cpu_paths.py)
        with (StopSignals() as signals, self._cpu.fit(model, self.precision.dtype, self.dist.enabled),
              self._model_setup.training(model, args.gradient_checkpointing)):  # activation checkpointing if asked
            while state.step < max_steps and not state.should_stop:
                windows = data.windows(state)  # the steps left in this epoch (a stream's: read as they come)
                if windows is None:  # resumed right at an epoch boundary
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    continue
                if state.batch_in_epoch == 0:
                    events.emit("epoch_start", state)
                for window, features in windows:
                    # 6. forward and backward over the micro-batches of one optimizer step
                    window_loss = self._forward_backward(window, features, state, events, scaler)
                    # 7. unscale, let callbacks see the gradients, clip
                    if scaler:
                        scaler.unscale_(self.optimizer)
                    events.emit("before_optimizer_step", state)
                    if args.max_grad_norm:
                        # in the model's parameter order, whatever the optimizer's grouping
                        grad_norm = clip_gradients(params, args.max_grad_norm,
                                                   skip_when_within=self._host_reads_free)
                    elif not scaler:  # no clipping: the norm still tells a NaN/inf gradient (fp16: the scaler does)
                        grad_norm = gradient_norm(params)
                    # 8. a NaN/inf loss stops (or skips) the step before the weights change; on CUDA
                    # the fused kernel skips it on the device, and the count is read at log steps
                    if guard is not None:
                        running_loss += torch.where(guard.mark(self.optimizer, self.dist.sum(window_loss), grad_norm),
                                                    window_loss, 0.0)
                    elif not scaler and not step_is_finite(self.dist.sum(window_loss), grad_norm, state, window,
                                                           args.on_nonfinite, model, self.optimizer):
                        state.batch_in_epoch += len(window)
                        continue
                    else:
                        running_loss += window_loss
                    if scaler:
                        scaler.step(self.optimizer)
                        scaler.update()
                    else:
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.schedule.step()
                    state.step += 1
                    state.batch_in_epoch += len(window)
                    running_windows += 1
                    events.emit("optimizer_step", state)
                    events.emit("batch_end", state)
                    # 9. log (the only place the loss is read back to the host), evaluate, checkpoint
                    if state.step % args.log_every == 0 or state.step == max_steps:
                        good = running_windows - (deferred_nonfinite(guard, state, running_windows, args.on_nonfinite)
                                                       if guard else 0)
                        self._log(state, events, {"train/loss": (self.dist.sum(running_loss) / self.dist.world_size
                                                                  / max(good, 1)).item(),
                                                  "train/lr": self.optimizer.param_groups[0]["lr"],
                                                  **({"train/grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                                                  **{f"train/{k}": float(v) for k, v in state.penalties.items()},
                                                  **({"train/skipped_steps": state.extra["skipped_steps"]}
                                                     if "skipped_steps" in state.extra else {})})
                        running_loss.zero_()
                        running_windows = 0
                    if val_features and isinstance(args.eval_every, int) and state.step % args.eval_every == 0:
                        self._evaluate_during_fit(state, events, val_records, val_features)
                    if isinstance(args.save_every, int) and state.step % args.save_every == 0:
                        write_checkpoint(state, events, scaler, fingerprint, self.dist)
                    if signals.received is not None:  # SIGTERM/SIGINT: this step is done; save and stop
                        write_checkpoint(state, events, scaler, fingerprint, self.dist)
                        signals.raise_stop(state.extra.get("last_checkpoint"))
                    if state.should_stop or state.step >= max_steps:
                        break
                # 10. end of epoch: evaluate and checkpoint when asked per epoch
                epoch_done = data.epoch_done(state)
                if epoch_done and val_features and args.eval_every == "epoch":
                    self._evaluate_during_fit(state, events, val_records, val_features)
                if (epoch_done or state.step >= max_steps or state.should_stop) and args.save_every == "epoch":
                    write_checkpoint(state, events, scaler, fingerprint, self.dist)
                if epoch_done:
                    events.emit("epoch_end", state)
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if guard is not None and running_windows:  # stopped between log steps (e.g. early stopping)
            deferred_nonfinite(guard, state, running_windows, args.on_nonfinite)
        events.emit("fit_end", state)
        tune_thresholds(self.task, args, self._eval_setup(), val_features)  # multi-label, tune_thresholds=True
        model.eval()
        return self.history

    def evaluate(self, dataset: Any, slices: Any = None, confidence: float | None = None,
                 batch_size: int | None = None, baseline: bool = False) -> dict[str, float]:
        """Loss and metrics on `dataset`; with `slices` per slice, with `confidence` bootstrap intervals, with `baseline`
        the base model's as ``baseline/<key>``; generated texts: ``last_artifacts["generations"]``, generations.jsonl."""
        records = as_records(dataset, "evaluation", self.task.name)
        self._setup(records)
        features = self.preprocessor.encode(records, "evaluation")
        check_token_ids(features, self.model, "evaluation")
        # FSDP: every process holds the full weights while evaluating; cpu_speedups: freed memory kept meanwhile
        with self.dist.unsharded(self.model), self._cpu.memory():
            base = BaseSource(self.model_source, self.task, self.args.seed, self._base_copy,
                              trained=self.state is not None) if baseline else None
            results = evaluate_model(self._eval_setup(), records, features, slices=slices, confidence=confidence,
                                     batch_size=batch_size, baseline=base)
        self.last_results, self.last_confidence = dict(results), confidence
        self.last_artifacts = dict(getattr(self.metrics, "last_artifacts", {}))  # e.g. a confusion matrix
        write_generations(self.output_dir, self.last_artifacts.get("generations"), self.dist.is_main)
        log_evaluation(getattr(self, "_trackers", ()), results)  # W&B, MLflow: as eval/<key>
        return results

    def predict(self, texts: Sequence[str] | Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
                batch_size: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
                top_p: float | None = None, do_sample: bool | None = None) -> list[Any]:
        """Classification: `{"label", "score"}` per text. LM tasks: the generated text of each prompt, record or
        conversation (`{"messages": [...]}` or a list of messages); the run's generation settings, or these."""
        records = as_predict_records(texts, self.task.name)
        self._setup(None)
        with self.dist.unsharded(self.model), self._cpu.memory():
            return predict_records(self._eval_setup(), records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, do_sample=do_sample)

    def save(self, path: str | Path, merge: bool = False) -> Path:
        """Write the model, tokenizer and label names to `path`, loadable by transformers' Auto classes
        and `pipeline()`, with a model card (README.md). With an adapter: peft's adapter folder (its base
        written to `path/base` when it came from a GGUF file or a model object), or with `merge=True` a
        plain model with the adapter merged in (the tuner's model keeps its adapter)."""
        if self.model is None:
            raise RuntimeError("Nothing to save yet: call fit() first (or evaluate()/predict() to load the model).")
        from ..reporting.model_card import write_model_card

        path = Path(path)
        weights = saved_weights(self.model, self.task, self.preprocessor, self.dist.full_state_dict(self.model))
        if self.dist.is_main:  # one writer under torchrun
            check_finite_model(weights if weights is not None else self.model.state_dict(), path)  # never NaN weights
            path.mkdir(parents=True, exist_ok=True)
            self._model_setup.save(self.model, self.tokenizer, path, weights, merge)  # model/adapter + tokenizer
            write_model_card(self, path)
        self.dist.barrier()
        return path

    def add_trainable_parameters(self, names: list[str]) -> None:
        """Put newly unfrozen parameters into the live optimizer, at the schedule's current factor."""
        if self.optimizer is None or self.model is None:
            return
        groups = parameter_groups(self.model, self.args.learning_rate, self.weight_decay, self._lr_scale(), names=names)
        present = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        for g in groups:
            keep = [(p, n) for p, n in zip(g["params"], g["names"]) if id(p) not in present]
            g["params"], g["names"] = [p for p, _ in keep], [n for _, n in keep]
        groups = [g for g in groups if g["params"]]
        add_parameter_groups(self.optimizer, groups, self.schedule.factor() if self.schedule else 1.0)

    # ---- internals --------------------------------------------------------------------------------
    def _forward_backward(self, window: list[list[int]], features: list[dict[str, Any]], state: TrainState,
                          events: CallbackList, scaler: Any) -> torch.Tensor:
        """Forward and backward over one step's micro-batches; returns the step's loss (detached).

        The loss of each micro-batch is divided by the targets of the whole step, so the summed
        gradients equal those of one big batch. On out-of-memory, the micro-batches are split in two
        and the step is tried again: same examples, same math, less memory at a time.
        """
        pre = self.preprocessor
        while True:
            split = state.extra.get("micro_batch_split", 1)
            pieces = [idx[i: i + max(1, -(-len(idx) // split))] for idx in window
                      for i in range(0, len(idx), max(1, -(-len(idx) // split)))]
            shares, weights = pieces, [1.0] * len(pieces)
            micro_batches = [pre.collate(gather(features, idx)) for idx in pieces]
            state.num_targets = sum(self.task.count_targets(b) for b in micro_batches)
            if self.dist.enabled:  # each process keeps its share of every piece (the count stays global)
                shares = [self.dist.shard(idx) or idx[:1] for idx in pieces]
                weights = [float(self.dist.world_size) if self.dist.shard(idx) else 0.0 for idx in pieces]
                micro_batches = [pre.collate(gather(features, idx)) for idx in shares]
            state.penalties = {}
            total = torch.zeros((), device=self.device)
            try:
                for n, (idx, batch) in enumerate(zip(shares, micro_batches)):
                    state.batch, state.example_ids = to_device(batch, self.device), idx
                    events.emit("batch_start", state)
                    with (self.dist.no_sync(self._train_model, last=n == len(micro_batches) - 1),
                          self._cpu.micro_batch(state.batch)):
                        # forward in mixed precision; the loss in float32
                        with self.precision.autocast():
                            state.outputs = self.task.forward(self._train_model, state.batch)
                            state.loss = self.task.loss(state.outputs, state.batch, state.num_targets)
                        if self.dist.enabled:  # undo DDP's averaging: the step's gradient is a sum over shares
                            state.loss = state.loss * weights[n]
                        # regularizers add their penalties here
                        events.emit("loss_computed", state)
                        # backward (scaled for fp16)
                        (scaler.scale(state.loss) if scaler else state.loss).backward()
                    total += state.loss.detach()
                return total
            except Exception as error:
                if not is_out_of_memory(error):
                    failure = compile_failure(error) if self.args.compile else None
                    if failure is not None:
                        raise failure from error
                    raise
                # drop this step's partial work, then split the micro-batches in two (or give up at one example)
                split_after_out_of_memory(error, state, pieces, self.optimizer, self.device)

    def _setup(self, records: list[dict[str, Any]] | None, fitting: bool = False) -> None:
        """Load tokenizer and model once; learn labels from `records` (training data) when needed."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_source, self.tokenizer_source)
        pre = self.preprocessor
        if self.task.has_classes and not pre.label2id:  # from the training data, or the fine-tuned head's own
            fit_labels(pre, self.model if self.model is not None else self.model_source, records, self.task)
        if self.model is None:
            self._seed_everything(self.args.seed)  # a freshly initialized head is the same in every run
            self.model = load_model(self.model_source, self.task, head_labels(pre) if self.task.has_classes else None,
                                    **self._model_setup.load_options).to(self.device)
            if getattr(self.model.config, "pad_token_id", None) is None:
                self.model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        configure_task(self.task, pre, self.model, self.args, records if fitting else None)  # weights, thresholds
        if pre.pack:  # attention must stay inside each packed example: refuse models that cannot
            from ..data.packing import packed_mask_dtype

            pre.packed_mask_dtype = packed_mask_dtype(self.model)
        if pre.tokenizer is None:
            pre.setup(self.tokenizer, self.task.name, None, max_positions(self.model.config))
            if getattr(self.model.config, "pad_token_id", None) is None:
                self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = self._model_setup.prepare(self.model, self.tokenizer)  # once: new tokens' rows, then the adapter

    def _callbacks(self, state: TrainState) -> list[Callback]:
        built: list[Callback] = []
        if self.freezer is not None:
            if hasattr(self.freezer, "bind"):
                self.freezer.bind(state)  # gradual unfreezing hands new parameters to state.add_trainable_parameters
            if isinstance(self.freezer, Callback):
                built.append(self.freezer)
        built += self.regularizers + self.user_callbacks
        if self.dist.is_main:
            built += make_loggers(self.loggers, self.output_dir)
        self._trackers = [c for c in built if hasattr(c, "log_results")]  # evaluate()'s results go to them too
        built.append(ProgressBar(self.progress if self.dist.is_main else False))
        return built

    def _lr_scale(self) -> Callable[[str], float] | None:
        return getattr(self.freezer, "lr_scale", None) if self.freezer is not None else None

    def _log(self, state: TrainState, events: CallbackList, values: dict[str, Any]) -> None:
        epoch = state.epoch + state.batch_in_epoch / (self._batches_per_epoch(state) or float("inf"))  # inf: unknown
        state.record = {"step": state.step, "epoch": round(epoch, 4), **values}
        self.history.append(state.record)
        events.emit("log", state)

    def _batches_per_epoch(self, state: TrainState) -> int:
        return state.extra.get("batches_per_epoch", 0)  # 0 until a stream has been read to its end

    def _evaluate_during_fit(self, state: TrainState, events: CallbackList, records: list[dict[str, Any]],
                             features: list[dict[str, Any]]) -> None:
        events.emit("eval_start", state)
        with self.dist.unsharded(self.model):
            results = evaluate_model(self._eval_setup(), records, features, events=events, state=state)
        self.model.train()
        self._log(state, events, {f"validation/{k}": v for k, v in results.items()})
        events.emit("eval_end", state)

    def _eval_setup(self) -> EvalSetup:
        """The narrow inputs of evaluation and prediction."""
        args = self.args
        return EvalSetup(model=self.model, task=self.task, preprocessor=self.preprocessor, tokenizer=self.tokenizer,
                         metrics=self.metrics, device=self.device, autocast=self.precision.autocast, dist=self.dist,
                         batch_size=args.eval_batch_size or 2 * args.batch_size, max_new_tokens=args.max_new_tokens,
                         generation_time_budget=args.generation_time_budget, seed=args.seed,
                         temperature=args.temperature, top_p=args.top_p, do_sample=args.do_sample)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

