"""`LoRA` (the settings) and `apply_lora` (a pure function that puts the adapters in, through peft).

LoRA trains a low-rank update ``B @ A`` (rank `r`, scaled by ``alpha / r``) beside each chosen linear
layer while the base weights stay frozen; peft implements it, this module decides where it goes:

* **Which blocks**: every transformer block (as `finetune_lib.freezing.find_parts` finds them), or
  only the top N when a `LayerFreezer(train_last=N)` is given (`freeze_first` and `train_fraction`
  count the same way). The blocks below stay frozen, so the freezer's frozen prefix still runs
  without autograd and can be cached (`cache_prefix=True`).
* **Which layers**: `target_modules="all-linear"` takes every `nn.Linear` (and GPT-2's `Conv1D`)
  inside those blocks, never the LM head; a list of names takes the layers whose full name is one of
  them or ends with ``"." + name`` (peft's rule), e.g. ``["q_proj", "v_proj"]``; a string other than
  "all-linear" is a regular expression matched against the whole module name (peft's rule too). The
  result is handed to peft as explicit module names, so the adapter config says exactly what was
  adapted.

Example:
    >>> from finetune_lib.adapters import LoRA, apply_lora
    >>> model = apply_lora(model, LoRA(r=8, alpha=16), blocks=[2, 3])   # a peft model
    >>> model.print_trainable_parameters()
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["LoRA", "PEFT_TASK_TYPES", "apply_lora", "linear_module_names", "lora_config", "require_peft",
           "target_module_names"]

PEFT_INSTALL = "pip install 'finetune_lib[peft]'"

#: peft's task type for each task that LoRA supports here
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}

QUANTIZE = ("4bit",)


def require_peft() -> Any:
    """The `peft` module, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"LoRA adapters need the peft package: {PEFT_INSTALL} (or pip install peft).") from error
    return peft


@dataclass
class LoRA:
    """LoRA adapters: train low-rank updates of the linear layers instead of the base weights (peft).

    Pass it to `FineTuner(..., adapter=LoRA(...))`. With `freezer=LayerFreezer(train_last=N)` the
    adapters go into the last N blocks only; without a freezer into every block. The base weights
    stay frozen (only peft's `modules_to_save` train in full). `FineTuner.save(path)` then writes an
    adapter folder that `peft.AutoPeftModelForCausalLM.from_pretrained(path)` loads, and
    `save(path, merge=True)` a plain model with the updates merged in.

    Args:
        r: rank of the update matrices (an integer >= 1); the adapter has ``r * (in + out)``
            parameters per adapted layer.
        alpha: scale numerator: the update is multiplied by ``alpha / r`` (> 0).
        dropout: dropout on the adapters' input while training, in [0, 1).
        target_modules: "all-linear" (every linear layer of the chosen blocks, the LM head excepted),
            a list of module names (a layer matches when its full name is the name or ends with
            ``"." + name``, e.g. ``["q_proj", "v_proj"]``), or a regular expression matched against
            the whole module name. Names that match no linear layer are refused before training,
            with the layer names the model has.
        modules_to_save: modules trained in full and saved with the adapter (peft's
            `modules_to_save`), e.g. ``["lm_head"]``. When the tokenizer brings tokens the model
            lacks, the input and output embeddings are added here on their own.
        quantize: None, or "4bit" for QLoRA: the frozen base loaded in 4-bit NF4 through bitsandbytes
            (a CUDA GPU only; refused on a CPU, from a GGUF file and for a model object).

    Example:
        >>> tuner = FineTuner("path/to/model", task="causal_lm", adapter=LoRA(r=16, alpha=32),
        ...                   freezer=LayerFreezer(train_last=4))
    """

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: str | Sequence[str] = "all-linear"
    modules_to_save: Sequence[str] | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA r must be an integer >= 1 (the rank of the update, e.g. 16), got {self.r!r}.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0 \
                or self.alpha != self.alpha or self.alpha == float("inf"):
            raise ValueError(f"LoRA alpha must be a positive number (updates are scaled by alpha / r; e.g. 2 * r), "
                             f"got {self.alpha!r}.")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1) (e.g. 0.05), got {self.dropout!r}.")
        self.target_modules = _names("target_modules", self.target_modules, allow_str=True)
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            try:
                re.compile(self.target_modules)
            except re.error as error:
                raise ValueError(f"LoRA target_modules={self.target_modules!r} is neither 'all-linear' nor a valid "
                                 f"regular expression ({error}); give a list of names such as "
                                 "['q_proj', 'v_proj'] instead.") from error
        if self.modules_to_save is not None:
            self.modules_to_save = _names("modules_to_save", self.modules_to_save, allow_str=False)
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise ValueError(f"LoRA quantize must be None or '4bit' (QLoRA, on a CUDA GPU), got {self.quantize!r}.")

    def summary(self, model: Any | None = None) -> dict[str, Any]:
        """The settings, and with the adapted `model` (a peft model): the adapted layers, the blocks
        that hold them and the trainable parameters (what the model card shows)."""
        out: dict[str, Any] = {"method": "LoRA", "r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                               "target_modules": (self.target_modules if isinstance(self.target_modules, str)
                                                  else list(self.target_modules)),
                               "modules_to_save": list(self.modules_to_save or []), "quantize": self.quantize}
        config = (getattr(model, "peft_config", None) or {}).get("default") if model is not None else None
        if config is not None and model is not None:
            adapted = sorted(config.target_modules or [])
            out["modules_to_save"] = sorted(config.modules_to_save or [])
            out["adapted_layers"] = len(adapted)
            out["layer_names"] = sorted({n.rsplit(".", 1)[-1] for n in adapted})
            out["blocks"] = sorted({int(m.group(1)) for n in adapted if (m := re.search(r"\.(\d+)\.", n))})
            out["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            out["total_parameters"] = sum(p.numel() for p in model.parameters())
        return out


def _names(field: str, value: Any, allow_str: bool) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if allow_str and value:
            return value
        raise ValueError(f"LoRA {field} must be a list of module names such as ['lm_head'], got {value!r}.")
    if not isinstance(value, Iterable) or not (names := tuple(value)) \
            or not all(isinstance(n, str) and n for n in names):
        kinds = "'all-linear', a regular expression or " if allow_str else ""
        raise ValueError(f"LoRA {field} must be {kinds}a non-empty list of module names (e.g. ['q_proj', "
                         f"'v_proj']), got {value!r}.")
    return names


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def linear_module_names(model: Any, blocks: Sequence[int] | None = None,
                        stacks: str | Sequence[str] | None = None) -> list[str]:
    """Full names of the linear layers (`nn.Linear`, GPT-2's `Conv1D`) inside the transformer blocks
    of `model` (all blocks, or the block indices in `blocks`), in model order. `stacks`: the module
    path(s) of the block lists, when discovery needs help (as `LayerFreezer(blocks=...)`)."""
    from ..freezing.blocks import find_parts

    parts = find_parts(model, stacks)
    chosen = range(len(parts.blocks)) if blocks is None else blocks
    out = []
    for index in chosen:
        block = parts.blocks[index]
        out += [f"{block.name}.{name}" for name, m in block.module.named_modules() if name and _is_linear(m)]
    return out


def _matches(name: str, target: str | Sequence[str]) -> bool:
    if target == "all-linear":
        return True
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def target_module_names(model: Any, lora: LoRA, blocks: Sequence[int] | None = None,
                        stacks: str | Sequence[str] | None = None) -> list[str]:
    """The full names of the layers that get adapters: the linear layers of the chosen blocks (all
    when `blocks` is None) that `lora.target_modules` selects.

    Raises:
        ValueError: nothing matches; the message lists the model's linear layer names.
    """
    linear = linear_module_names(model, blocks, stacks)
    chosen = [n for n in linear if _matches(n, lora.target_modules)]
    if not chosen:
        kinds = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linear))
        where = "the model's blocks" if blocks is None else f"blocks {list(blocks)}"
        raise ValueError(f"LoRA target_modules={lora.target_modules!r} match no linear layer in {where}. The "
                         f"linear layers there are named {kinds} (e.g. {linear[0] if linear else 'none'}). Use "
                         "some of these names, e.g. target_modules=['q_proj', 'v_proj'], or 'all-linear'.")
    return chosen


def lora_config(model: Any, lora: LoRA, task: str = "causal_lm", blocks: Sequence[int] | None = None,
                modules_to_save: Sequence[str] = (), stacks: str | Sequence[str] | None = None) -> Any:
    """peft's `LoraConfig` for `model`: the adapted layers named in full (see `target_module_names`),
    `modules_to_save` from `lora` plus the given ones, tied embeddings kept tied (peft's
    `ensure_weight_tying`, from peft 0.18; with older peft the saved copies are untied)."""
    peft = require_peft()
    if task not in PEFT_TASK_TYPES:
        raise ValueError(f"LoRA adapters are supported for task 'causal_lm' and 'seq2seq', not {task!r}. For "
                         "classification, train the last blocks with LayerFreezer(train_last=N) instead.")
    targets = target_module_names(model, lora, blocks, stacks)
    save = list(dict.fromkeys([*(lora.modules_to_save or ()), *modules_to_save])) or None
    config = getattr(model, "config", None)
    modules = dict(model.named_modules())
    conv1d = any(not isinstance(modules[n], nn.Linear) for n in targets)  # GPT-2 stores its weights transposed
    tying = {}
    if "ensure_weight_tying" in getattr(peft.LoraConfig, "__dataclass_fields__", {}):  # peft >= 0.18
        tying["ensure_weight_tying"] = bool(save and getattr(config, "tie_word_embeddings", False))
    return peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=float(lora.dropout), target_modules=targets,
        modules_to_save=save, task_type=PEFT_TASK_TYPES[task], fan_in_fan_out=conv1d, bias="none", **tying)


def apply_lora(model: Any, lora: LoRA, task: str = "causal_lm", blocks: Sequence[int] | None = None,
               modules_to_save: Sequence[str] = (), stacks: str | Sequence[str] | None = None) -> Any:
    """Put LoRA adapters into `model` (changed in place, as peft does) and return the peft model.

    Args:
        model: a transformers model.
        lora: the settings.
        task: "causal_lm" or "seq2seq" (peft's task type follows).
        blocks: indices of the blocks that get adapters (bottom block 0); None: every block.
        modules_to_save: more modules to train in full and save with the adapter (e.g. grown
            embeddings), besides `lora.modules_to_save`.
        stacks: module path(s) of the block lists, when discovery needs help (`LayerFreezer(blocks=...)`).

    Returns:
        The `peft.PeftModel`: only the adapters (and `modules_to_save`) are trainable.
    """
    peft = require_peft()
    config = lora_config(model, lora, task, blocks, modules_to_save, stacks)
    with warnings.catch_warnings():  # peft asks transformers 5 for `is_gradient_checkpointing`, now deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config)
