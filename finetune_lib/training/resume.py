"""Saving and restoring a run's full state, for checkpoints and exact resume."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint as ckpt
from .events import Callback, CallbackList, TrainState
from .rundir import compare_fingerprints

if TYPE_CHECKING:  # pragma: no cover
    from .finetuner import FineTuner

log = logging.getLogger("finetune_lib")


def fingerprint(tuner: FineTuner) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint (compared on resume)."""
    source = tuner.model_source
    return {
        "model": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
        "task": tuner.task.name,
        "labels": [str(n) for n in tuner.preprocessor.label_names or []],
        "batch_size": tuner.args.batch_size,
        "gradient_accumulation": tuner.args.gradient_accumulation,
        "max_length": tuner.preprocessor.max_length,
        "freezer": repr(tuner.freezer) if tuner.freezer is not None else None,
        "seed": tuner.args.seed,
    }


def write_checkpoint(tuner: FineTuner, state: TrainState, events: CallbackList, scaler: Any,
                     fingerprint: dict[str, Any]) -> None:
    """Everything an exact resume needs, written atomically under `<output_dir>/checkpoints`."""
    if tuner.output_dir is None:
        return
    if not tuner.dist.is_main:  # rank 0 writes; the others wait until the checkpoint is complete
        tuner.dist.barrier()
        return
    trainer_state = {
        "optimizer": tuner.optimizer.state_dict(),
        "schedule": tuner.schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler else {},
        "rng": ckpt.rng_state(),
        "position": {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch},
        "callbacks": {key: cb.state_dict() for key, cb in _keyed(events.callbacks)},
    }
    info = {"position": trainer_state["position"], "fingerprint": fingerprint, "history": tuner.history,
            "args": asdict(tuner.args)}
    path = ckpt.save_checkpoint(tuner.output_dir / "checkpoints", state.step, tuner.model, trainer_state, info,
                                keep=tuner.args.keep_checkpoints)
    state.extra["last_checkpoint"] = str(path)
    tuner.dist.barrier()
    events.emit("checkpoint", state)


def restore(tuner: FineTuner, path: Path, state: TrainState, events: CallbackList, scaler: Any,
            fingerprint: dict[str, Any], allow_config_change: bool) -> None:
    """Load a checkpoint: weights, callbacks (before the optimizer: they may add parameter groups),
    optimizer, schedule, scaler, RNG states, data position and history."""
    saved, info = ckpt.load_checkpoint(path, tuner.model)
    changes = compare_fingerprints(info.get("fingerprint", {}), fingerprint)
    if changes and not allow_config_change:
        raise ValueError(f"The run in {tuner.output_dir} was made with other settings:\n  " + "\n  ".join(changes)
                         + "\nResume with the same settings, pass allow_config_change=True to fit() to "
                         "continue anyway, or start a new run in another output_dir.")
    for key, cb in _keyed(events.callbacks):
        if key in saved["callbacks"]:
            cb.load_state_dict(saved["callbacks"][key])
    tuner.optimizer.load_state_dict(saved["optimizer"])
    tuner.schedule.load_state_dict(saved["schedule"])
    if scaler and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(saved["rng"])
    pos = saved["position"]
    state.step, state.epoch, state.batch_in_epoch = int(pos["step"]), int(pos["epoch"]), int(pos["batch_in_epoch"])
    tuner.history = list(info.get("history", []))
    for cb in events.callbacks:
        if hasattr(cb, "rewrite"):  # file loggers drop records of steps that were rolled back
            cb.rewrite(tuner.history)
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
