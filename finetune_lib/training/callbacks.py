"""Built-in callbacks: progress bars and loggers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..events import Callback, TrainState


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JSONLLogger(Callback):
    """Appends every logged record to `<path>` as one JSON object per line.

    On resume the file is rewritten from the checkpoint's history first, so it never holds records
    from steps that were rolled back.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:
            for record in history:
                f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def on_log(self, state: TrainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in state.record.items()}) + "\n")


class ProgressBar(Callback):
    """A `tqdm.auto` bar over optimizer steps (a widget in Jupyter, text in a terminal).

    Quiet when `enabled=False`, and by default when standard error is not a terminal.
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = enabled
        self.bar: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        disable = not self.enabled if self.enabled is not None else not _interactive()
        self.bar = tqdm(total=state.max_steps, initial=state.step, desc="training", disable=disable,
                        dynamic_ncols=True)

    def on_optimizer_step(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, state: TrainState) -> None:
        if self.bar is None:
            return
        shown = {k.split("/", 1)[-1] if k.startswith("train/") else k: v for k, v in state.record.items()
                 if k in ("train/loss", "validation/loss") or k.startswith("validation/")}
        post = {k: f"{_jsonable(v):.4g}" for k, v in list(shown.items())[:4] if isinstance(_jsonable(v), float)}
        if "overfitting_warning" in state.extra:
            post["warning"] = "overfitting"
        self.bar.set_postfix(post, refresh=False)

    def on_eval_end(self, state: TrainState) -> None:
        # the validation record is logged before eval_end, where OverfittingMonitor decides: show a
        # warning raised at this evaluation now, not at the next log (which may never come)
        if self.bar is not None and "overfitting_warning" in state.extra:
            self.on_log(state)

    def on_fit_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _interactive() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]

        if get_ipython() is not None:
            return True
    except ImportError:
        pass
    return sys.stderr.isatty()
