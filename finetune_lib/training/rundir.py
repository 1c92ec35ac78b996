"""The run folder: what it holds, and refusing to mix two runs in one folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import clean_stale, incomplete_checkpoints, list_checkpoints, missing_files

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"


def check_output_dir(output_dir: Path | None, resume: bool | str, overwrite: bool) -> Path | None:
    """Decide, before anything is written, whether the run may use `output_dir`.

    Returns the checkpoint to resume from (None to start fresh). Raises when the folder holds another
    run and neither `resume` nor `overwrite` was asked, or when `resume` was asked with nothing to resume.
    """
    if output_dir is None:
        if resume:
            raise ValueError("resume needs an output_dir holding the run's checkpoints; pass output_dir=...")
        return None
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file, not a folder. Choose another path.")
    holds_run = (output_dir / RUN_FILE).exists() or (output_dir / CHECKPOINTS).exists() or (output_dir / LOG_FILE).exists()
    if resume:
        root = output_dir / CHECKPOINTS
        found = list_checkpoints(root)
        newest = f" The newest complete checkpoint is {found[-1]}." if found else ""
        if isinstance(resume, (str, Path)) and resume is not True:
            path = Path(resume)
            missing = missing_files(path) if path.is_dir() else None
            if missing is None or missing:
                what = "does not exist" if missing is None else f"lacks {', '.join(missing)}"
                raise ValueError(f"resume={str(resume)!r} is not a complete checkpoint folder: it {what}. Pass "
                                 "a checkpoint-<step> folder written by FineTuner, or resume=True for the newest "
                                 "complete one." + newest)
            return path
        incomplete = [(p, miss) for p, miss in incomplete_checkpoints(root) if not found or p.name > found[-1].name]
        for path, miss in incomplete:
            log.warning("skipping %s: it lacks %s (left by an interrupted write or deleted by hand); resuming from "
                        "%s instead. Delete that folder to silence this.", path, ", ".join(miss),
                        found[-1].name if found else "nothing")
        if not found:
            left = (" It holds only incomplete checkpoint folders: " + "; ".join(
                f"{p.name} (lacks {', '.join(m)})" for p, m in incomplete) + ".") if incomplete else ""
            raise ValueError(f"resume=True but {root} holds no complete checkpoint.{left} Start without resume "
                             "(overwrite=True to replace this run), or point output_dir at the run to continue.")
        return found[-1]
    if holds_run and not overwrite:
        raise FileExistsError(f"output_dir {output_dir} holds another run (run.json, log.jsonl or checkpoints/). "
                              "Pass resume=True to fit() to continue it, overwrite=True to FineTuner to replace "
                              "it, or choose another output_dir.")
    return None


def prepare_output_dir(output_dir: Path | None, resuming: bool, overwrite: bool, fingerprint: dict[str, Any]) -> None:
    """Create the folder; on overwrite remove only this library's own files (never anything else)."""
    if output_dir is None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(output_dir / CHECKPOINTS)
    if not resuming and overwrite:
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)
        for name in (RUN_FILE, LOG_FILE, "log.csv", "generations.jsonl"):
            (output_dir / name).unlink(missing_ok=True)
    if not resuming or not (output_dir / RUN_FILE).exists():  # a resume rewrites it once the settings are checked
        write_run_file(output_dir, fingerprint)


def write_run_file(output_dir: Path, fingerprint: dict[str, Any]) -> None:
    """`run.json`: the fingerprint of the settings the run now uses."""
    (output_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint}, indent=2, default=str))


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's configuration and the current one.

    Keys the checkpoint does not hold (written by an older version of this library) are not compared.
    """
    keys = sorted(k for k in set(saved) | set(current) if k in saved)
    return [f"{k}: checkpoint has {saved.get(k)!r}, now {current.get(k)!r}" for k in keys
            if json.dumps(saved.get(k), default=str) != json.dumps(current.get(k), default=str)]
