"""Checkpoints that are complete or absent, and that load without unpickling arbitrary objects.

A checkpoint is a folder `checkpoint-<step>` under `<output_dir>/checkpoints/`:
- `model.safetensors`: the weights (safetensors; tied weights handled);
- `trainer_state.pt`: optimizer, schedule, loss scaler, RNG states (Python, NumPy, torch, CUDA),
  the position in the data order and the callbacks' state; loaded with `weights_only=True`, so only
  tensors and plain containers are accepted;
- `trainer_state.json`: the same position and the run's fingerprint, for people and tools.

It is written to a hidden temporary folder and renamed when complete, so a crash never leaves a half
checkpoint that looks complete; temporary folders left by a crash are removed at the next start, and a
`checkpoint-<step>` folder that lacks a file (an older crash, a file deleted by hand) is never taken
as the newest.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .guards import NonFiniteLossError, nonfinite_tensors

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
REPLACED_PREFIX = ".replaced-checkpoint-"  # a checkpoint being replaced by a rewrite of the same step
FILES = ("model.safetensors", "trainer_state.pt", "trainer_state.json")


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch (CPU and CUDA), as tensors and plain values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed. Nothing half-written is left; the older checkpoints are intact."""


def write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    """Optimizer, schedule, scaler and RNG states (tensors and plain containers only)."""
    torch.save(state, path)


def write_weights(path: Path, model: torch.nn.Module, weights: dict[str, torch.Tensor] | None = None) -> None:
    """The model's weights (safetensors; tied weights once), or `weights` in their place."""
    if weights is None:
        save_model(model, str(path))
    else:
        save_file({n: t.contiguous() for n, t in weights.items()}, str(path), metadata={"format": "pt"})


def write_info(path: Path, info: dict[str, Any]) -> None:
    """The position, fingerprint and history, as JSON for people and tools."""
    path.write_text(json.dumps(info, indent=2, default=str))


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, state: dict[str, Any], info: dict[str, Any],
                    keep: int | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically and keep the newest `keep`. `weights`: a full
    state dict to write instead of `model`'s own (a model sharded with FSDP, gathered on rank 0).

    The files go to a temporary folder that is renamed to `checkpoint-<step>` once they are all
    written and synced. On any failure the temporary folder is removed and `CheckpointWriteError`
    says which checkpoint is still the newest complete one. Weights or optimizer state holding a NaN
    or inf are never written: `NonFiniteLossError` says so, and nothing changes on disk.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"A checkpoint's step must be an integer >= 0, got {step!r}.")
    check_finite_state(root, step, weights if weights is not None else model.state_dict(), state.get("optimizer"))
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}-{os.getpid()}"
    aside = root / f"{REPLACED_PREFIX}{step:08d}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_weights(tmp / "model.safetensors", model, weights)
        write_trainer_state(tmp / "trainer_state.pt", state)
        write_info(tmp / "trainer_state.json", info)
        for name in FILES:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step again (a stop signal right after a scheduled save, a resumed run)
            os.replace(final, aside)  # a crash from here on leaves `aside`, restored by clean_stale
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not final.exists():  # put back the checkpoint that was being replaced
            os.replace(aside, final)
        if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, let them through
            raise
        kept = list_checkpoints(root)
        error = CheckpointWriteError(
            f"Writing checkpoint {final.name} in {root} failed: {e}. Nothing half-written was kept; "
            + (f"the newest complete checkpoint is {kept[-1].name}" if kept else "there is no complete checkpoint "
               "yet") + ". Fix the cause (free disk space, check permissions), then "
            + ("continue with fit(..., resume=True)." if kept else "start the run again."))
        error.errno = getattr(e, "errno", None)
        raise error from e
    if keep:
        for old in list_checkpoints(root)[:-keep]:
            _remove(old)
    return final


def _named_tensors(value: Any, prefix: str) -> list[tuple[str, Any]]:
    """Every tensor in nested dicts and lists, named by its path (e.g. `state.3.exp_avg`)."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _named_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, (list, tuple)):
        return [t for i, v in enumerate(value) for t in _named_tensors(v, f"{prefix}.{i}")]
    return [(prefix, value)] if isinstance(value, torch.Tensor) else []


def check_finite_state(root: Path, step: int, weights: dict[str, torch.Tensor], optimizer: Any = None) -> None:
    """Refuse to write checkpoint `step`: raise `NonFiniteLossError` when the weights (or the optimizer
    state) hold a NaN or inf. One pass over the tensors, one host read; nothing is written."""
    bad = nonfinite_tensors(weights.items())
    bad_opt = nonfinite_tensors(_named_tensors(optimizer, "")) if optimizer else []
    if not bad and not bad_opt:
        return
    what = []
    if bad:
        what.append(f"the weights ({len(bad)} of {len(weights)} tensors, e.g. {bad[:3]})")
    if bad_opt:
        what.append(f"the optimizer state ({len(bad_opt)} tensors, e.g. {bad_opt[:3]})")
    kept = list_checkpoints(root)
    before = (f"The newest complete checkpoint is {kept[-1].name}; after changing the settings, continue from it "
              "with fit(..., resume=True)." if kept else "There is no earlier checkpoint: start the run again "
              "after changing the settings.")
    raise NonFiniteLossError(
        f"Checkpoint checkpoint-{step:08d} was not written: {' and '.join(what)} hold NaN or inf values, so "
        f"training diverged at or before step {step}. Lower the learning rate, set max_grad_norm (e.g. 1.0), or use "
        f"precision='fp32' or 'bf16' instead of 'fp16'. {before}")


def check_finite_model(weights: dict[str, torch.Tensor], path: Path | str) -> None:
    """Refuse to save a model whose weights hold a NaN or inf (`FineTuner.save`); nothing is written."""
    bad = nonfinite_tensors(weights.items())
    if bad:
        raise NonFiniteLossError(
            f"The model was not saved to {path}: {len(bad)} of its {len(weights)} weight tensors hold NaN or inf "
            f"values (e.g. {bad[:3]}), so training diverged. Lower the learning rate or set max_grad_norm (e.g. 1.0) "
            "and train again, or resume from the last checkpoint (checkpoints are never written with such values).")


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: renamed to a temporary name first, so a crash while deleting never
    leaves a `checkpoint-<step>` with some files gone (the temporary name is cleaned up at the next start)."""
    doomed = path.with_name(f"{TMP_PREFIX}{path.name}-deleted-{os.getpid()}")
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def missing_files(path: Path) -> list[str]:
    """The files a checkpoint folder lacks (empty for a complete checkpoint)."""
    return [f for f in FILES if not (path / f).is_file()]


def _numbered(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (a folder missing any file is left out)."""
    return [p for _, p in _numbered(root) if not missing_files(p)]


def incomplete_checkpoints(root: Path) -> list[tuple[Path, list[str]]]:
    """`checkpoint-<step>` folders that lack files (left by an older crash or deleted by hand), with
    what each lacks, oldest first. They are never resumed from."""
    return [(p, miss) for _, p in _numbered(root) if (miss := missing_files(p))]


def clean_stale(root: Path) -> list[Path]:
    """Remove temporary folders a crashed write left behind; returns what was removed.

    A checkpoint that was being replaced by a rewrite of the same step is put back when the rewrite
    did not finish (so the crash loses nothing that was complete before).
    """
    removed = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        if p.name.startswith(REPLACED_PREFIX):
            step = p.name[len(REPLACED_PREFIX):].split("-")[0]
            final = root / f"checkpoint-{step}"
            if not missing_files(p) and (not final.exists() or missing_files(final)):
                if final.exists():
                    shutil.rmtree(final, ignore_errors=True)
                os.replace(p, final)
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def read_info(path: Path) -> dict[str, Any]:
    """The checkpoint's `trainer_state.json` (position, fingerprint, history)."""
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"Cannot read {path / 'trainer_state.json'}: {e}. The checkpoint is damaged; delete "
                           "this folder to resume from the one before it.") from e


def load_checkpoint(path: Path, model: torch.nn.Module,
                    load: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[list[str], list[str]]] | None = None,
                    check_state: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into `model`; return (trainer state, info). Never unpickles arbitrary objects.
    `load(model, weights) -> (missing, unexpected)` replaces `load_state_dict` (a model sharded with FSDP).
    The trainer state is read first; `check_state=True` checks it is one `FineTuner` wrote
    (`check_trainer_state`) before any weight is loaded."""
    try:
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"Cannot read {path / 'trainer_state.pt'}: {e}. It is damaged, truncated or holds "
                           "objects other than tensors and plain values (refused for safety).") from e
    if check_state:
        check_trainer_state(state, path)
    try:
        if load is None:
            missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        else:
            weights = load_file(str(path / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise RuntimeError(f"Cannot read weights from {path / 'model.safetensors'}: {e}. The file is damaged or "
                           "truncated; delete this checkpoint folder to resume from the one before it.") from e
    if load is not None:
        missing, unexpected = load(model, weights)
    if unexpected or [k for k in missing if k not in _tied_names(model)]:
        raise RuntimeError(f"Checkpoint {path} does not match the model: missing {list(missing)[:5]}, "
                           f"unexpected {list(unexpected)[:5]}. Resume with the same model and task.")
    return state, read_info(path)


TRAINER_STATE_KEYS = ("optimizer", "schedule", "rng", "position", "callbacks")


def check_trainer_state(state: Any, path: Path) -> None:
    """A loaded `trainer_state.pt` must hold what `write_checkpoint` writes, with a position of
    integers >= 0 (`step`, `epoch`, `batch_in_epoch`; `step` the one in the folder's name) and a
    schedule position >= 0. A crafted or damaged state is refused here, before it is used: a negative
    step, for one, would make checkpoint folders that are never listed, resumed or pruned."""
    def refuse(what: str) -> None:
        raise RuntimeError(f"{path / 'trainer_state.pt'} is not a valid trainer state: {what}. It is damaged or was "
                           "not written by FineTuner; delete this checkpoint folder to resume from the one before it.")

    if not isinstance(state, dict):
        refuse(f"it holds a {type(state).__name__}, not a dict")
    missing = [k for k in TRAINER_STATE_KEYS if k not in state]
    if missing:
        refuse(f"it lacks {missing}")
    position, schedule = state["position"], state["schedule"]
    if not isinstance(position, dict) or not isinstance(schedule, dict):
        refuse("its position and schedule must be dicts")
    values = {k: position.get(k) for k in ("step", "epoch", "batch_in_epoch")}
    values["schedule.last_step"] = schedule.get("last_step")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            refuse(f"{key} is {value!r}; it must be an integer >= 0")
    named = CHECKPOINT_RE.match(path.name)
    if named and int(named.group(1)) != values["step"]:
        refuse(f"its step ({values['step']}) is not the one in the folder's name ({path.name})")


def _tied_names(model: torch.nn.Module) -> set[str]:
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.update({name, seen[id(p)]})
        seen.setdefault(id(p), name)
    return tied
