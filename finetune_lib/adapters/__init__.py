"""Parameter-efficient adapters (LoRA, through peft), beside `finetune_lib.freezing`.

`LoRA` holds the settings and `apply_lora` puts the adapters into a model (a pure function);
`FineTuner(..., adapter=LoRA(...))` does it for a run, with a `LayerFreezer` saying which blocks get
adapters (`train_last=N`: the last N). `finetune_lib.adapters.saving` writes the adapter folder, the
base it needs and merged weights. Needs peft: ``pip install 'finetune_lib[peft]'``.

Example:
    >>> from finetune_lib import FineTuner, LayerFreezer
    >>> from finetune_lib.adapters import LoRA
    >>> tuner = FineTuner("path/to/model", task="causal_lm", adapter=LoRA(r=16, alpha=32),
    ...                   freezer=LayerFreezer(train_last=2))
"""

from .lora import LoRA, apply_lora, linear_module_names, lora_config, require_peft, target_module_names
from .saving import base_state_dict, save_adapter, save_base, save_merged

__all__ = [
    "LoRA",
    "apply_lora",
    "base_state_dict",
    "linear_module_names",
    "lora_config",
    "require_peft",
    "save_adapter",
    "save_base",
    "save_merged",
    "target_module_names",
]
