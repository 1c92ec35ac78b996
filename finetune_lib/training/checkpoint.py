"""Checkpoints that are complete or absent, and that load without unpickling arbitrary objects.

A checkpoint is a folder `checkpoint-<step>` under `<output_dir>/checkpoints/`:
- `model.safetensors`: the weights (safetensors; tied weights handled);
- `trainer_state.pt`: optimizer, schedule, loss scaler, RNG states (Python, NumPy, torch, CUDA),
  the position in the data order and the callbacks' state; loaded with `weights_only=True`, so only
  tensors and plain containers are accepted;
- `trainer_state.json`: the same position and the run's fingerprint, for people and tools.

It is written to a hidden temporary folder and renamed when complete, so a crash never leaves a half
checkpoint that looks complete; temporary folders left by a crash are removed at the next start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
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


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, state: dict[str, Any], info: dict[str, Any],
                    keep: int | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically and keep the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(info, indent=2, default=str))
        for name in FILES:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in FILES):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def clean_stale(root: Path) -> list[Path]:
    """Remove temporary folders a crashed write left behind; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def load_checkpoint(path: Path, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into `model`; return (trainer state, info). Never unpickles arbitrary objects."""
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise RuntimeError(f"Cannot read weights from {path / 'model.safetensors'}: {e}. The file is damaged or "
                           "truncated; delete this checkpoint folder to resume from the one before it.") from e
    if unexpected or [k for k in missing if k not in _tied_names(model)]:
        raise RuntimeError(f"Checkpoint {path} does not match the model: missing {list(missing)[:5]}, "
                           f"unexpected {list(unexpected)[:5]}. Resume with the same model and task.")
    try:
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"Cannot read {path / 'trainer_state.pt'}: {e}. It is damaged, truncated or holds "
                           "objects other than tensors and plain values (refused for safety).") from e
    info = json.loads((path / "trainer_state.json").read_text())
    return state, info


def _tied_names(model: torch.nn.Module) -> set[str]:
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.update({name, seen[id(p)]})
        seen.setdefault(id(p), name)
    return tied
