"""Freezing a model wrapped by peft: which parameters are the adapter's, and block paths inside the wrapper.

`LayerFreezer.apply` uses both, so that with `FineTuner(adapter=LoRA(...))` only the adapter's
parameters train and block discovery finds the same blocks as in the plain model.

Example:
    >>> adapter_parameters(peft_model)       # {"base_model.model.model.layers.29.self_attn.q_proj.lora_A.default.weight", ...}
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["adapter_parameters", "block_paths"]


def adapter_parameters(model: nn.Module) -> set[str] | None:
    """The names of an adapter's parameters when `model` is a peft model (the LoRA matrices and the
    copies peft trains for `modules_to_save`), else None. Read from peft's naming (the tuner's prefix,
    `lora_`, and `.modules_to_save.`), so calling it again gives the same answer whatever
    `requires_grad` says."""
    prefix = getattr(getattr(model, "base_model", None), "prefix", None)
    if not hasattr(model, "peft_config") or not isinstance(prefix, str) or not prefix:
        return None
    return {n for n, _ in model.named_parameters() if prefix in n or ".modules_to_save." in n}


def block_paths(model: nn.Module, blocks: str | Sequence[str] | None) -> str | list[str] | None:
    """`blocks` (paths in the base model) as paths in `model`, which may be a peft model around it."""
    if blocks is None or not hasattr(model, "get_base_model"):
        return blocks
    inner = next((n for n, m in model.named_modules() if m is model.get_base_model()), "")
    paths = [blocks] if isinstance(blocks, str) else list(blocks)
    modules = dict(model.named_modules())
    return [b if b in modules or not inner else f"{inner}.{b}" for b in paths]
