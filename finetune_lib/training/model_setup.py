"""What `FineTuner` does to the loaded model besides training it: grow the embeddings for new tokens,
put an adapter (LoRA) in, checkpoint activations while `fit` runs, and save the result.

`ModelSetup` is built with the `FineTuner` (so a missing package, QLoRA on a CPU, or a freezer that
cannot go with an adapter are refused before anything loads) and used at four points:

1. `prepare(model, tokenizer)` once the model and tokenizer are loaded: when the tokenizer has more
   tokens than the model has embedding rows (special tokens added, or a chat template that brings
   its own), `model.resize_token_embeddings(len(tokenizer))`; then, with an adapter, the adapter is
   put in (`finetune_lib.adapters.apply_lora`): in the blocks the `LayerFreezer` trains, or all, with
   the grown embeddings (input and output) in peft's `modules_to_save` so their new rows train.
2. `after_freeze(model)` right after the `LayerFreezer` froze the model: without an adapter, grown
   embeddings and the LM head are made trainable again (new rows must learn something); the frozen
   prefix then runs with autograd (nothing below the embeddings is frozen any more).
3. `training(model, on)` around the training loop: `gradient_checkpointing=True` turns activation
   checkpointing on (non-reentrant) and back off at the end, leaving the model as it was.
4. `save(...)`: plain weights, an adapter folder (with its base written beside it when there is no hub
   id or folder to point at), or merged weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .gguf import gguf_location, is_gguf, require_gguf

log = logging.getLogger(__name__)

__all__ = ["ModelSetup", "activation_checkpointing", "grow_embeddings"]


def _module_name(model: Any, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def grow_embeddings(model: Any, tokenizer: Any) -> list[str]:
    """Resize the embeddings of `model` to `len(tokenizer)` when tokens were added to its tokenizer
    (special tokens, a chat template's markers): the tokenizer has more tokens than the model has
    rows, while its base vocabulary (`tokenizer.vocab_size`) fits. A base vocabulary larger than the
    embeddings means a tokenizer of another model: nothing grows, and `check_token_ids` refuses the
    data. Returns the names of the input and output embedding modules (empty when nothing grew). The
    new rows start at the mean of the old ones (transformers' default)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is None or tokenizer is None or len(tokenizer) <= weight.shape[0]:
        return []
    rows = weight.shape[0]
    if getattr(tokenizer, "vocab_size", len(tokenizer)) > rows:  # not added tokens: another model's tokenizer
        return []
    model.resize_token_embeddings(len(tokenizer))
    found = [_module_name(model, model.get_input_embeddings()), _module_name(model, model.get_output_embeddings())]
    names = [n for n in dict.fromkeys(found) if n]
    log.warning("the tokenizer has %d tokens but the model had %d embedding rows: embeddings resized to %d; "
                "%s train so the new tokens learn something", len(tokenizer), rows, len(tokenizer), " and ".join(names))
    return names


def _embedding_rows(model: Any) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if weight is not None else 0


def _checkpointing_on(model: Any) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextlib.contextmanager
def activation_checkpointing(model: Any, enabled: bool = True) -> Iterator[None]:
    """Activation (gradient) checkpointing on `model` (a transformers model, or a peft model around
    one) while the block runs: each block's activations are recomputed in backward instead of kept.
    Non-reentrant (`use_reentrant=False`), so frozen layers and adapters need no input gradients.
    Off again afterwards, unless it was already on."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not enabled or _checkpointing_on(target):
        yield
        return
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing=True, but {type(target).__name__} does not support activation "
                         "checkpointing (transformers models mark it with supports_gradient_checkpointing). "
                         "Use gradient_checkpointing=False, or freeze more blocks / lower max_length to save memory.")
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        disable = target.activation_checkpointing_disable
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        disable = target.gradient_checkpointing_disable
    try:
        yield
    finally:
        disable()


class ModelSetup:
    """The adapter, new-token and checkpointing steps of a run (see the module docstring).

    Args:
        adapter: a `finetune_lib.adapters.LoRA`, or None.
        freezer: the run's `LayerFreezer` (or None): with an adapter it says which blocks get adapters.
        task: the task's name.
        device: the run's device.
        source: what the model is loaded from (a hub id, a folder, a .gguf file or a model object).

    Raises:
        ImportError: peft (with an adapter), gguf (for a .gguf file) or bitsandbytes (QLoRA) missing.
        ValueError: QLoRA without a CUDA device, an adapter for a task it does not support, or a freezer
            setting that cannot go with an adapter.
    """

    def __init__(self, adapter: Any, freezer: Any, task: str, device: torch.device, source: Any) -> None:
        self.adapter, self.freezer, self.task, self.device, self.source = adapter, freezer, task, device, source
        self.new_token_modules: list[str] = []
        self._prepared: nn.Module | None = None
        if is_gguf(source):  # the packages, and the file itself
            require_gguf()
            gguf_location(source)
        if adapter is None:
            return
        from ..adapters.lora import PEFT_TASK_TYPES, LoRA, require_peft

        if not isinstance(adapter, LoRA):
            raise TypeError(f"adapter must be a LoRA(...) from finetune_lib.adapters, got {type(adapter).__name__}.")
        require_peft()
        if task not in PEFT_TASK_TYPES:
            raise ValueError(f"LoRA adapters are supported for task 'causal_lm' and 'seq2seq', not {task!r}. For "
                             "classification, train the last blocks with LayerFreezer(train_last=N) instead.")
        if freezer is not None and hasattr(freezer, "check_adapter"):
            freezer.check_adapter()
        if adapter.quantize is not None:
            self._check_qlora()

    # -- QLoRA ------------------------------------------------------------------------------------------
    def _check_qlora(self) -> None:
        if self.device.type != "cuda":
            raise ValueError(f"LoRA(quantize='4bit') (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit weights are "
                             f"computed by CUDA kernels, and this run is on {self.device.type}. Drop quantize= to "
                             "train LoRA on the full-precision base (small models fit a CPU), or run on a GPU.")
        if not isinstance(self.source, (str, Path)) or is_gguf(self.source):
            raise ValueError("LoRA(quantize='4bit') quantizes the base while loading it, so the model must be a hub "
                             "id or a folder of safetensors weights, not a model object or a .gguf file.")
        try:
            import bitsandbytes  # type: ignore[import-not-found]  # noqa: F401
        except ImportError as error:
            raise ImportError("LoRA(quantize='4bit') (QLoRA) needs bitsandbytes: pip install bitsandbytes.") from error

    @property
    def load_options(self) -> dict[str, Any]:
        """Extra `from_pretrained` arguments: QLoRA's 4-bit NF4 quantization (bf16 compute) on the device."""
        if self.adapter is None or self.adapter.quantize is None:
            return {}
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16)
        return {"quantization_config": config, "device_map": {"": self.device}}

    # -- 1. before training -----------------------------------------------------------------------------
    def prepare(self, model: Any, tokenizer: Any) -> Any:
        """Grow the embeddings for new tokens and put the adapter in, once; returns the model to train
        (the peft model with an adapter)."""
        if model is self._prepared:
            return model
        rows = _embedding_rows(model)
        base = getattr(tokenizer, "vocab_size", len(tokenizer)) if tokenizer is not None else 0
        grows = tokenizer is not None and rows and len(tokenizer) > rows >= base  # as grow_embeddings decides
        if grows and getattr(self.freezer, "cache_prefix", False):  # refused before the model changes
            raise ValueError(
                f"cache_prefix=True caches what the frozen bottom blocks compute from the embeddings, but the "
                f"tokenizer has {len(tokenizer) - rows} token(s) the model lacks (added special tokens, or a chat "
                "template's markers), so the embeddings would grow and train, and a cached prefix would go stale. "
                "Use cache_prefix=False, or a tokenizer and chat_template whose tokens the model already has "
                "(e.g. the model's own template).")
        self.new_token_modules = grow_embeddings(model, tokenizer)
        if self.adapter is not None and not hasattr(model, "peft_config"):
            from ..adapters.lora import apply_lora
            from ..freezing.blocks import find_parts

            if self.adapter.quantize is not None:
                import peft

                model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            stacks = getattr(self.freezer, "blocks", None)  # the freezer's block lists, when named
            n = len(find_parts(model, stacks).blocks)
            count = self.freezer.trained_block_count(n) if self.freezer is not None else n
            blocks = list(range(n - count, n))
            if not blocks:
                raise ValueError("The LayerFreezer trains no block, so LoRA has nowhere to go: use train_last=N "
                                 "(N >= 1) to put adapters into the last N blocks, or drop the freezer (all blocks).")
            model = apply_lora(model, self.adapter, self.task, blocks=None if count == n else blocks,
                               modules_to_save=self.new_token_modules, stacks=stacks)
            summary = self.adapter.summary(model)
            log.info("LoRA r=%d on %d layers of blocks %s: %s trainable parameters of %s", self.adapter.r,
                     summary["adapted_layers"], _ranges(summary["blocks"]), f"{summary['trainable_parameters']:,}",
                     f"{summary['total_parameters']:,}")
        self._prepared = model
        return model

    # -- 2. after the freezer ------------------------------------------------------------------------
    def after_freeze(self, model: Any) -> None:
        """Without an adapter, grown embeddings (input and output) train even under a `LayerFreezer`."""
        if self.adapter is not None or not self.new_token_modules:
            return
        for name in self.new_token_modules:
            for param in model.get_submodule(name).parameters():
                param.requires_grad_(True)

    # -- 3. while training ------------------------------------------------------------------------------
    def training(self, model: Any, gradient_checkpointing: bool) -> contextlib.AbstractContextManager[None]:
        """The context the training loop runs in: activation checkpointing when asked for."""
        return activation_checkpointing(model, gradient_checkpointing)

    # -- 4. saving --------------------------------------------------------------------------------------
    def save(self, model: Any, tokenizer: Any, path: Path, weights: dict[str, torch.Tensor] | None,
             merge: bool = False) -> str:
        """Write the model and tokenizer to `path`; returns what was written: "model", "adapter" or
        "merged". A model without adapter is written with `save_pretrained` (`merge` changes nothing)."""
        if not hasattr(model, "peft_config"):
            model.save_pretrained(path, state_dict=weights)
            tokenizer.save_pretrained(path)
            return "model"
        from ..adapters.saving import save_adapter, save_merged

        if weights is not None:
            raise ValueError("Saving adapters of a model sharded with FSDP is not supported; train LoRA with DDP.")
        if merge:
            if self.adapter is not None and self.adapter.quantize is not None:
                raise ValueError("save(merge=True) needs full-precision base weights, and this base is 4-bit "
                                 "(QLoRA). Save the adapter (merge=False), then load the base in bf16 and merge "
                                 "with peft: PeftModel.from_pretrained(base, folder).merge_and_unload().")
            save_merged(model, path)
            tokenizer.save_pretrained(path)
            return "merged"
        save_adapter(model, path, self._base_reference(model, tokenizer, path))
        tokenizer.save_pretrained(path)
        return "adapter"

    def _base_reference(self, model: Any, tokenizer: Any, path: Path) -> str:
        """What the adapter config names as its base: the hub id, the base folder (absolute), or, for a
        GGUF file or a model object, the base written to `path/base` (absolute: peft reads a relative
        path from the working directory)."""
        source = self.source
        if isinstance(source, (str, Path)) and not is_gguf(source):
            folder = Path(source).expanduser()
            return str(folder.resolve()) if folder.exists() else str(source)
        from ..adapters.saving import save_base

        base = save_base(model, path / "base")
        tokenizer.save_pretrained(base)
        return str(base.resolve())


def _ranges(indices: list[int]) -> str:
    if not indices:
        return "[]"
    if indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 1:
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices))
