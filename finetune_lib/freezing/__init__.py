"""Layer freezing: find the blocks of any architecture, freeze the early ones, train the last N,
unfreeze gradually, and scale learning rates layer by layer.

`freeze(model, ...)` is the pure function; `LayerFreezer` is the same as a training callback (gradual
unfreezing, layer-wise learning-rate decay, checkpointed state). `find_parts` is the structural
discovery both use; see `finetune_lib.freezing.blocks` for its rules.

Example:
    >>> from finetune_lib.freezing import LayerFreezer
    >>> print(LayerFreezer(train_last=2).apply(model))
"""

from .blocks import Block, BlockDiscoveryError, ModelParts, compile_patterns, find_parts, module_tree
from .cache import PrefixCache
from .freezer import LayerFreezer, adapter_parameters, freeze, layerwise_lr_scales, trainable_selection
from .nograd import NoGradPrefix
from .summary import FreezeSummary, SummaryRow, build_summary

__all__ = [
    "Block",
    "BlockDiscoveryError",
    "FreezeSummary",
    "LayerFreezer",
    "ModelParts",
    "NoGradPrefix",
    "PrefixCache",
    "SummaryRow",
    "adapter_parameters",
    "build_summary",
    "compile_patterns",
    "find_parts",
    "freeze",
    "layerwise_lr_scales",
    "module_tree",
    "trainable_selection",
]
