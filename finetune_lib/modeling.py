"""What a model's modules are, by type: normalization layers and weight-matrix layers.

Used by the optimizer (no weight decay on normalization weights) and by block discovery in
`freezing`; it imports nothing else of the package.

Example:
    >>> is_norm_module(torch.nn.LayerNorm(8))
    True
"""

from __future__ import annotations

import torch

__all__ = ["NORM_TYPES", "WEIGHT_TYPES", "is_norm_module"]

NORM_TYPES: tuple[type, ...] = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)
if hasattr(torch.nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (torch.nn.RMSNorm,)


# layers that hold weight matrices, never normalization, whatever their class is called
WEIGHT_TYPES: tuple[type, ...] = (torch.nn.Linear, torch.nn.Embedding, torch.nn.modules.conv._ConvNd)


def is_norm_module(module: torch.nn.Module) -> bool:
    """True for normalization layers, including model-specific classes (`LlamaRMSNorm`, `T5LayerNorm`).

    A model's own class counts when its name contains "norm" and it has no submodules, unless it is
    a `Linear`, `Embedding` or convolution (a `NormProjection(nn.Linear)` is still decayed).
    """
    if isinstance(module, NORM_TYPES):
        return True
    if isinstance(module, WEIGHT_TYPES):
        return False
    name = type(module).__name__.lower()
    return "norm" in name and not any(True for _ in module.children())
