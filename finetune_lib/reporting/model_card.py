"""The model card (README.md) written next to a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..training.finetuner import FineTuner


def write_model_card(tuner: FineTuner, folder: Path) -> Path:
    """Write README.md: base model, task, labels, settings, last metrics, library version."""
    from .. import __version__

    args = tuner.args
    source = tuner.model_source
    evals = [r for r in tuner.history if any(k.startswith("validation/") for k in r)]
    lines = [
        "---", "library_name: transformers", "tags: [finetune_lib]", "---", "",
        f"# Fine-tuned {source if isinstance(source, (str, Path)) else type(source).__name__}", "",
        f"- task: `{tuner.task.name}`",
        f"- fine-tuned with finetune_lib {__version__}",
    ]
    if tuner.preprocessor.label_names:
        lines.append(f"- labels: {', '.join(map(str, tuner.preprocessor.label_names))}")
    if tuner.freezer is not None:
        lines.append(f"- freezing: `{tuner.freezer!r}`")
    if tuner.regularizers:
        lines.append(f"- regularizers: {', '.join(type(r).__name__ for r in tuner.regularizers)}")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in vars(args).items()]
    if evals:
        lines += ["", "## Last validation metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k.split('/', 1)[1]} | {v:.4f} |" for k, v in evals[-1].items()
                  if k.startswith("validation/") and isinstance(v, float)]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
