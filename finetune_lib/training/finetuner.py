"""`FineTuner`: the training core. `fit` is one loop that reads top to bottom; everything else
(regularizers, the layer freezer, loggers, progress bars, user code) attaches through events."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.collate import LengthGroupedBatches, to_device
from ..data.preprocessor import Preprocessor
from ..tasks import Task, get_task
from . import checkpoint as ckpt
from .args import TrainingArgs
from .callbacks import JSONLLogger, ProgressBar
from .evaluation import evaluate_model, predict_records
from .events import Callback, CallbackList, TrainState
from .loading import as_records, check_token_ids, load_model, load_tokenizer, max_positions
from .optim import Schedule, add_parameter_groups, build_optimizer, parameter_groups
from .precision import resolve_precision
from .rundir import LOG_FILE, check_output_dir, compare_fingerprints, prepare_output_dir

log = logging.getLogger("finetune_lib")


class FineTuner:
    """Fine-tunes a pretrained model on records.

    Args:
        model: a hub id or a local folder (loaded with `from_pretrained`, with the right head for the
            task and the labels found in the data), or a model object.
        task: "classification", "causal_lm" or "seq2seq".
        tokenizer: a tokenizer or its id/folder; by default loaded from `model`.
        preprocessor: a `Preprocessor` (default: one with safe cleaning and the model's length limit).
        freezer: a `LayerFreezer`, to train only the last blocks.
        regularizers: `Regularizer` objects (weight decay, dropout, early stopping, ...).
        metrics: a `MetricSuite`; by default accuracy and macro F1 (classification) or perplexity.
        callbacks: your own `Callback` objects.
        output_dir: where the log and checkpoints go; None keeps everything in memory.
        overwrite: replace a run already in `output_dir` (only this library's files are removed).
        device: "cpu", "cuda", ...; default: CUDA when available.
        progress: show progress bars (None: only in a terminal or Jupyter).
        **settings: the fields of `TrainingArgs` (epochs, batch_size, learning_rate, ...).

    Example:
        >>> tuner = FineTuner("path/to/model", task="classification", epochs=2, output_dir="runs/a")
        >>> tuner.fit(splits.train, splits.validation)
        >>> tuner.evaluate(splits.test)
        {'loss': 0.21, 'accuracy': 0.93, 'f1': 0.93}
    """

    def __init__(self, model: Any, task: str = "classification", *, tokenizer: Any = None,
                 preprocessor: Preprocessor | None = None, freezer: Any = None,
                 regularizers: Sequence[Callback] = (), metrics: Any = None, callbacks: Sequence[Callback] = (),
                 output_dir: str | Path | None = None, overwrite: bool = False, device: str | None = None,
                 progress: bool | None = None, **settings: Any):
        unknown = set(settings) - set(TrainingArgs.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Unknown FineTuner setting(s) {sorted(unknown)}. Known: "
                            f"{', '.join(TrainingArgs.__dataclass_fields__)}.")
        self.args = TrainingArgs(**settings)
        self.args.validate()
        self.task: Task = get_task(task)
        self.model_source = model
        self.tokenizer_source = tokenizer
        self.preprocessor = preprocessor if preprocessor is not None else Preprocessor()
        self.freezer = freezer
        self.regularizers = list(regularizers)
        self.metrics = metrics
        self.user_callbacks = list(callbacks)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.overwrite = overwrite
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(self.args.precision, self.device)
        self.progress = progress
        self.weight_decay = self.args.weight_decay
        self.model: torch.nn.Module | None = None
        self.tokenizer: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: Schedule | None = None
        self.history: list[dict[str, Any]] = []
        self.state: TrainState | None = None
        self._seed_everything(self.args.seed)  # also makes a freshly initialized head reproducible

    # ---- public API -------------------------------------------------------------------------------
    def fit(self, train: Any, validation: Any = None, resume: bool | str = False,
            allow_config_change: bool = False) -> list[dict[str, Any]]:
        """Train on `train`, evaluating on `validation`; returns `history`.

        Args:
            train: training records (a split from DatasetBuilder, a list of dicts, a DataFrame).
            validation: records to evaluate on during training (optional).
            resume: True continues from the newest complete checkpoint in `output_dir`; a path
                continues from that checkpoint.
            allow_config_change: resume even when the settings differ from the checkpoint's.
        """
        args = self.args
        # 1. check the data and the run folder before anything is loaded or written
        train_records = as_records(train, "train", self.task.name)
        val_records = as_records(validation, "validation", self.task.name) if validation is not None else None
        resume_from = check_output_dir(self.output_dir, resume, self.overwrite)
        # 2. model, tokenizer and labels
        self._setup(train_records)
        assert self.model is not None
        model, pre = self.model, self.preprocessor
        # 3. tokenize once; batches are padded per batch
        train_features = pre.encode(train_records, "train")
        val_features = pre.encode(val_records, "validation") if val_records else None
        check_token_ids(train_features, model, "train")
        micro = args.batch_size // args.gradient_accumulation
        batches = LengthGroupedBatches([pre.length(f) for f in train_features], micro, seed=args.seed,
                                       group_by_length=args.group_by_length)
        steps_per_epoch = -(-len(batches) // args.gradient_accumulation)
        max_steps = args.max_steps or max(1, int(round(steps_per_epoch * args.epochs)))
        # 4. the run folder (refuses to mix runs), callbacks, optimizer and schedule
        fingerprint = self._fingerprint()
        prepare_output_dir(self.output_dir, resume_from is not None, self.overwrite, fingerprint)
        state = self.state = TrainState(tuner=self, model=model, max_steps=max_steps)
        state.extra["batches_per_epoch"] = len(batches)
        events = CallbackList(self._callbacks())
        events.emit("setup", state)
        if self.freezer is not None:
            self.freezer.apply(model)
        model.train()
        groups = parameter_groups(model, args.learning_rate, self.weight_decay, self._lr_scale())
        self.optimizer = state.optimizer = build_optimizer(groups, args.learning_rate, self.device)
        warmup = args.warmup_steps or int(args.warmup_ratio * max_steps)
        self.schedule = state.scheduler = Schedule(self.optimizer, args.schedule, warmup, max_steps)
        scaler = self.precision.scaler()
        # 5. resume: weights, callbacks (they may add parameter groups), optimizer, RNG, data position
        if resume_from is not None:
            self._restore(resume_from, state, events, scaler, fingerprint, allow_config_change)
        log.info("training %d steps (%d per epoch), %d examples, micro-batch %d x %d", max_steps,
                 steps_per_epoch, len(train_features), micro, args.gradient_accumulation)
        events.emit("fit_start", state)
        running_loss, running_windows, grad_norm = torch.zeros((), device=self.device), 0, None
        while state.step < max_steps and not state.should_stop:
            order = batches.epoch(state.epoch)
            if state.batch_in_epoch >= len(order):  # resumed right at an epoch boundary
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            if state.batch_in_epoch == 0:
                events.emit("epoch_start", state)
            windows = [order[i: i + args.gradient_accumulation] for i in range(0, len(order), args.gradient_accumulation)]
            for window in windows[state.batch_in_epoch // args.gradient_accumulation:]:
                # 6. the micro-batches of one optimizer step; the loss is normalized by all their targets
                micro_batches = [pre.collate([train_features[i] for i in idx]) for idx in window]
                state.num_targets = sum(self.task.count_targets(b) for b in micro_batches)
                state.penalties = {}
                for batch in micro_batches:
                    state.batch = to_device(batch, self.device)
                    events.emit("batch_start", state)
                    # forward in mixed precision; the loss in float32
                    with self.precision.autocast():
                        state.outputs = self.task.forward(model, state.batch)
                        state.loss = self.task.loss(state.outputs, state.batch, state.num_targets)
                    # regularizers add their penalties here
                    events.emit("loss_computed", state)
                    # backward (scaled for fp16)
                    (scaler.scale(state.loss) if scaler else state.loss).backward()
                    running_loss += state.loss.detach()
                # 7. unscale, let callbacks see the gradients, clip, step, schedule
                if scaler:
                    scaler.unscale_(self.optimizer)
                events.emit("before_optimizer_step", state)
                if args.max_grad_norm:
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], args.max_grad_norm)
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
                # 8. log (the only place the loss is read back to the host), evaluate, checkpoint
                if state.step % args.log_every == 0 or state.step == max_steps:
                    self._log(state, events, {"train/loss": (running_loss / running_windows).item(),
                                              "train/lr": self.optimizer.param_groups[0]["lr"],
                                              **({"train/grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                                              **{f"train/{k}": float(v) for k, v in state.penalties.items()}})
                    running_loss.zero_()
                    running_windows = 0
                if val_features and isinstance(args.eval_every, int) and state.step % args.eval_every == 0:
                    self._evaluate_during_fit(state, events, val_records, val_features)
                if isinstance(args.save_every, int) and state.step % args.save_every == 0:
                    self._checkpoint(state, events, scaler, fingerprint)
                if state.should_stop or state.step >= max_steps:
                    break
            # 9. end of epoch: evaluate and checkpoint when asked per epoch
            epoch_done = state.batch_in_epoch >= len(order)
            if epoch_done and val_features and args.eval_every == "epoch":
                self._evaluate_during_fit(state, events, val_records, val_features)
            if (epoch_done or state.step >= max_steps or state.should_stop) and args.save_every == "epoch":
                self._checkpoint(state, events, scaler, fingerprint)
            if epoch_done:
                events.emit("epoch_end", state)
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        events.emit("fit_end", state)
        model.eval()
        return self.history

    def evaluate(self, dataset: Any, slices: Any = None, confidence: float | None = None,
                 batch_size: int | None = None) -> dict[str, float]:
        """Loss and metrics on `dataset`; with `slices` per slice, with `confidence` bootstrap intervals."""
        records = as_records(dataset, "evaluation", self.task.name)
        self._setup(records)
        features = self.preprocessor.encode(records, "evaluation")
        check_token_ids(features, self.model, "evaluation")
        return evaluate_model(self, records, features, slices=slices, confidence=confidence, batch_size=batch_size)

    def predict(self, texts: Sequence[str] | Sequence[Mapping[str, Any]], batch_size: int | None = None,
                max_new_tokens: int | None = None) -> list[Any]:
        """Classification: `{"label", "score"}` per text. LM tasks: the generated text per prompt."""
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap a single text in a list.")
        key = "text" if self.task.name == "classification" else "prompt"
        records = [dict(t) if isinstance(t, Mapping) else {key: t} for t in texts]
        self._setup(None)
        return predict_records(self, records, batch_size=batch_size, max_new_tokens=max_new_tokens)

    def save(self, path: str | Path) -> Path:
        """Write the model, tokenizer and label names to `path`, loadable by transformers' Auto classes
        and `pipeline()`, with a model card (README.md)."""
        if self.model is None:
            raise RuntimeError("Nothing to save yet: call fit() first (or evaluate()/predict() to load the model).")
        from ..reporting.model_card import write_model_card

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        write_model_card(self, path)
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
    def _setup(self, records: list[dict[str, Any]] | None) -> None:
        """Load tokenizer and model once; learn labels from `records` (training data) when needed."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_source, self.tokenizer_source)
        pre = self.preprocessor
        classification = self.task.name == "classification"
        if classification and not pre.label2id:
            model_labels = self._labels_from_model()
            if records is None:  # evaluate/predict before fit: the model's own labels
                if model_labels is None:
                    raise RuntimeError("The label names are unknown: call fit() first, or load a fine-tuned model.")
                pre.label_names = model_labels
                records = [{"label": n} for n in model_labels]
            elif model_labels and {str(r["label"]) for r in records} <= {str(n) for n in model_labels}:
                pre.label_names = [type(records[0]["label"])(n) for n in model_labels]  # keep the head's order
            pre.fit_labels(records)
        if self.model is None:
            labels = {"id2label": pre.id2label, "label2id": {str(n): i for i, n in enumerate(pre.label_names or [])}}
            self._seed_everything(self.args.seed)  # a freshly initialized head is the same in every run
            self.model = load_model(self.model_source, self.task, labels if classification else None).to(self.device)
            if getattr(self.model.config, "pad_token_id", None) is None:
                self.model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        if pre.tokenizer is None:
            pre.setup(self.tokenizer, self.task.name, None, max_positions(self.model.config))
            if getattr(self.model.config, "pad_token_id", None) is None:
                self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _labels_from_model(self) -> list[Any] | None:
        """Label names of an already fine-tuned classifier (None for generic `LABEL_i` names)."""
        source = self.model if self.model is not None else self.model_source
        config = getattr(source, "config", None)
        if config is None and isinstance(source, (str, Path)):
            from transformers import AutoConfig

            try:
                config = AutoConfig.from_pretrained(str(source))
            except (OSError, ValueError):
                return None
        id2label = getattr(config, "id2label", None) or {}
        names = [id2label[i] for i in sorted(id2label)]
        if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            return None
        return names

    def _callbacks(self) -> list[Callback]:
        built: list[Callback] = []
        if self.freezer is not None:
            if hasattr(self.freezer, "bind"):
                self.freezer.bind(self)
            if isinstance(self.freezer, Callback):
                built.append(self.freezer)
        built += self.regularizers + self.user_callbacks
        if self.output_dir is not None:
            built.append(JSONLLogger(self.output_dir / LOG_FILE))
        built.append(ProgressBar(self.progress))
        return built

    def _lr_scale(self) -> Callable[[str], float] | None:
        return getattr(self.freezer, "lr_scale", None) if self.freezer is not None else None

    def _log(self, state: TrainState, events: CallbackList, values: dict[str, Any]) -> None:
        epoch = state.epoch + state.batch_in_epoch / max(1, self._batches_per_epoch(state))
        state.record = {"step": state.step, "epoch": round(epoch, 4), **values}
        self.history.append(state.record)
        events.emit("log", state)

    def _batches_per_epoch(self, state: TrainState) -> int:
        return state.extra.get("batches_per_epoch", 0) or 1

    def _evaluate_during_fit(self, state: TrainState, events: CallbackList, records: list[dict[str, Any]],
                             features: list[dict[str, Any]]) -> None:
        events.emit("eval_start", state)
        results = evaluate_model(self, records, features, events=events, state=state)
        self.model.train()
        self._log(state, events, {f"validation/{k}": v for k, v in results.items()})
        events.emit("eval_end", state)

    def _fingerprint(self) -> dict[str, Any]:
        source = self.model_source
        return {
            "model": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
            "task": self.task.name,
            "labels": [str(n) for n in self.preprocessor.label_names or []],
            "batch_size": self.args.batch_size,
            "gradient_accumulation": self.args.gradient_accumulation,
            "max_length": self.preprocessor.max_length,
            "freezer": repr(self.freezer) if self.freezer is not None else None,
            "seed": self.args.seed,
        }

    def _checkpoint(self, state: TrainState, events: CallbackList, scaler: Any, fingerprint: dict[str, Any]) -> None:
        if self.output_dir is None:
            return
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler else {},
            "rng": ckpt.rng_state(),
            "position": {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch},
            "callbacks": {key: cb.state_dict() for key, cb in _keyed(events.callbacks)},
        }
        info = {"position": trainer_state["position"], "fingerprint": fingerprint, "history": self.history,
                "args": asdict(self.args)}
        path = ckpt.save_checkpoint(self.output_dir / "checkpoints", state.step, self.model, trainer_state, info,
                                    keep=self.args.keep_checkpoints)
        state.extra["last_checkpoint"] = str(path)
        events.emit("checkpoint", state)

    def _restore(self, path: Path, state: TrainState, events: CallbackList, scaler: Any,
                 fingerprint: dict[str, Any], allow_config_change: bool) -> None:
        saved, info = ckpt.load_checkpoint(path, self.model)
        changes = compare_fingerprints(info.get("fingerprint", {}), fingerprint)
        if changes and not allow_config_change:
            raise ValueError(f"The run in {self.output_dir} was made with other settings:\n  " + "\n  ".join(changes)
                             + "\nResume with the same settings, pass allow_config_change=True to fit() to "
                             "continue anyway, or start a new run in another output_dir.")
        for key, cb in _keyed(events.callbacks):
            if key in saved["callbacks"]:
                cb.load_state_dict(saved["callbacks"][key])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        if scaler and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        ckpt.set_rng_state(saved["rng"])
        pos = saved["position"]
        state.step, state.epoch, state.batch_in_epoch = int(pos["step"]), int(pos["epoch"]), int(pos["batch_in_epoch"])
        self.history = list(info.get("history", []))
        for cb in events.callbacks:
            if isinstance(cb, JSONLLogger):
                cb.rewrite(self.history)
        log.info("resumed from %s at step %d (epoch %d)", path, state.step, state.epoch)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def _keyed(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Stable keys for callback state: class name and rank among callbacks of that class."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        name = type(cb).__name__
        out.append((f"{name}:{seen.get(name, 0)}", cb))
        seen[name] = seen.get(name, 0) + 1
    return out
