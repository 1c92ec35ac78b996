"""Saving and restoring a run's full state, for checkpoints and exact resume."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..events import Callback, CallbackList, TrainState
from . import checkpoint as ckpt
from .rundir import compare_fingerprints, write_run_file

log = logging.getLogger(__name__)


def fingerprint(source: Any, model: Any, task: str, preprocessor: Any, args: Any, freezer: Any,
                adapter: Any = None) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint (compared on resume).

    The model is named by its source (path or hub id, or its class for a model object) and
    described by its class, a hash of its config and its parameter shapes, so a different model
    under the same name, or another model object of the same class, is told apart.

    Args:
        source: what the model was loaded from (a path, a hub id or a model object).
        model: the loaded model (None before loading).
        task: the task's name.
        preprocessor: the run's `Preprocessor` (labels, max_length).
        args: the run's `TrainingArgs`.
        freezer: the `LayerFreezer`, or None.
        adapter: the adapter settings (`LoRA(...)`), or None.
    """
    return {
        "model": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
        **model_fingerprint(model if model is not None else source),
        "task": task,
        "labels": [str(n) for n in preprocessor.label_names or []],
        "batch_size": args.batch_size,
        "gradient_accumulation": args.gradient_accumulation,
        "max_length": preprocessor.max_length,
        # which tokens carry the loss, named only when not the default (older checkpoints keep matching)
        **({"train_on": preprocessor.train_on} if getattr(preprocessor, "train_on", "assistant") != "assistant" else {}),
        **({"label_all_subtokens": True} if getattr(preprocessor, "label_all_subtokens", False) else {}),
        "freezer": repr(freezer) if freezer is not None else None,
        **({"adapter": repr(adapter)} if adapter is not None else {}),
        "seed": args.seed,
    }


# config fields that do not describe the model itself: versions, paths, the labels (compared apart),
# runtime switches, and dropout (a regularizer's setting, which `Dropout` writes into the config)
_VOLATILE_CONFIG = ("transformers_version", "_name_or_path", "architectures", "id2label", "label2id", "problem_type",
                    "use_cache", "return_dict", "output_attentions", "output_hidden_states")


def _describes_model(key: str) -> bool:
    return key not in _VOLATILE_CONFIG and "dropout" not in key and not key.endswith("pdrop")


def model_fingerprint(model: Any) -> dict[str, Any]:
    """Class, config hash and parameter shapes of a loaded model (empty when it is not loaded)."""
    if not isinstance(model, torch.nn.Module):
        return {}
    out: dict[str, Any] = {"model_class": type(model).__name__}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        fields = {k: v for k, v in config.to_dict().items() if _describes_model(k)}
        out["model_config"] = _digest(json.dumps(fields, sort_keys=True, default=str))
    shapes = [(name, list(p.shape), str(p.dtype)) for name, p in model.state_dict().items()]
    count = sum(p.numel() for p in model.parameters())
    out["model_parameters"] = f"{len(shapes)} tensors, {count:,} parameters, shapes {_digest(json.dumps(shapes))}"
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_checkpoint(state: TrainState, events: CallbackList, scaler: Any, fingerprint: dict[str, Any],
                     dist: Any) -> None:
    """Everything an exact resume needs, written atomically under `<state.output_dir>/checkpoints`.

    Reads the run from `state` (model, optimizer, scheduler, position, history, args); `dist` is the
    `DistributedContext` (FSDP gathers, rank 0 writes)."""
    if state.output_dir is None:
        return
    # FSDP: every process takes part in gathering full weights and optimizer state (None otherwise)
    weights = dist.full_state_dict(state.model)
    optimizer = dist.optimizer_state_dict(state.optimizer, state.model)
    if not dist.is_main:  # rank 0 writes; the others wait until the checkpoint is complete
        dist.barrier()
        return
    trainer_state = {
        "optimizer": optimizer,
        "schedule": state.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else {},
        "rng": ckpt.rng_state(),
        "position": {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                     # a stream's: the buffer holding the next micro-batch (finetune_lib.training.data_order)
                     **({"stream": state.extra["stream_position"]} if "stream_position" in state.extra else {})},
        "callbacks": {key: cb.state_dict() for key, cb in _keyed(events.callbacks)},
    }
    info = {"position": trainer_state["position"], "fingerprint": fingerprint, "history": state.history,
            "args": asdict(state.args)}
    path = ckpt.save_checkpoint(Path(state.output_dir) / "checkpoints", state.step, state.model, trainer_state, info,
                                keep=state.args.keep_checkpoints, weights=weights)
    state.extra["last_checkpoint"] = str(path)
    dist.barrier()
    events.emit("checkpoint", state)


def restore(state: TrainState, path: Path, events: CallbackList, scaler: Any, fingerprint: dict[str, Any],
            allow_config_change: bool, dist: Any) -> None:
    """Load a checkpoint into the run `state` describes: weights, callbacks (before the optimizer: they
    may add parameter groups), optimizer, schedule, scaler, RNG states, data position and history
    (`state.history` is refilled in place)."""
    # the settings first: a changed model would otherwise fail as a weights mismatch, less clearly
    changes = compare_fingerprints(ckpt.read_info(path).get("fingerprint", {}), fingerprint)
    if changes and not allow_config_change:
        raise ValueError(f"The run in {state.output_dir} was made with other settings than now "
                         f"(checkpoint {path.name}):\n  " + "\n  ".join(changes)
                         + "\nResume with the same settings, pass allow_config_change=True to fit() to "
                         "continue anyway, or start a new run in another output_dir.")
    if changes:
        log.warning("resuming %s with changed settings (allow_config_change=True): %s", path, "; ".join(changes))
    saved, info = ckpt.load_checkpoint(path, state.model, load=dist.load_state_dict if dist.fsdp else None,
                                       check_state=True)  # a crafted position (a negative step) is refused first
    if state.output_dir is not None and dist.is_main:
        write_run_file(Path(state.output_dir), fingerprint)  # the run now goes on with these settings
    for key, cb in _keyed(events.callbacks):
        if key in saved["callbacks"]:
            cb.load_state_dict(saved["callbacks"][key])
    try:
        dist.load_optimizer_state_dict(state.optimizer, state.model, saved["optimizer"])
    except ValueError as e:  # other trainable parameters (a changed freezer or model): groups do not match
        if not changes:
            raise RuntimeError(f"The optimizer state in {path / 'trainer_state.pt'} does not fit this model's "
                               f"trainable parameters ({e}). Resume with the same model and LayerFreezer.") from e
        log.warning("the optimizer state in %s does not fit the changed trainable parameters (%s); the optimizer "
                    "starts afresh (weights, schedule position and data position are restored)", path, e)
    state.scheduler.load_state_dict(saved["schedule"])
    if scaler and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(saved["rng"])
    pos = saved["position"]
    state.step, state.epoch, state.batch_in_epoch = int(pos["step"]), int(pos["epoch"]), int(pos["batch_in_epoch"])
    if isinstance(pos.get("stream"), dict):  # a stream's buffer position (read from that buffer on)
        state.extra["stream_position"] = {k: int(v) for k, v in pos["stream"].items()}
    state.history[:] = list(info.get("history", []))
    for cb in events.callbacks:
        if hasattr(cb, "rewrite"):  # file loggers drop records of steps that were rolled back
            cb.rewrite(state.history)
    log.info("resumed from %s at step %d (epoch %d)", path, state.step, state.epoch)


def _keyed(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Stable keys for callback state: class name and rank among callbacks of that class."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        name = type(cb).__name__
        out.append((f"{name}:{seen.get(name, 0)}", cb))
        seen[name] = seen.get(name, 0) + 1
    return out
