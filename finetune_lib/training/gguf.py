"""Loading GGUF checkpoints (llama.cpp's format) as plain float32 models that train and save.

`FineTuner("path/to/model.gguf", task="causal_lm")` reads the model and its tokenizer from the one
file. transformers reads a GGUF file with `from_pretrained(folder, gguf_file=name)`, de-quantizing
every weight to float32 (here always: `GgufConfig(dequantize=True)`, so no kernel is fetched); the
model it returns keeps a `quantization_config` and refuses `save_pretrained`. So it is rebuilt from its
config without `quantization_config` and given the loaded weights: an ordinary model that trains,
checkpoints and saves as safetensors the Auto classes load.

De-quantized weights are not the original ones: a Q4 file stores each block of 32 weights in 4 bits
plus a scale (and, for Q4_1, an offset), so the float32 weights read back differ from the bf16 weights
the file was made from, by the quantization error. Training starts from those weights, and `save()`
writes them (plus what training changed), not the original checkpoint.

Needs the `gguf` package (and `accelerate`, which transformers asks for when reading GGUF):
``pip install 'finetune_lib[gguf]'``.
"""

from __future__ import annotations

import copy
import inspect
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["GGUF_INSTALL", "gguf_location", "is_gguf", "load_gguf_model", "load_gguf_tokenizer", "require_gguf"]

GGUF_INSTALL = "pip install 'finetune_lib[gguf]'"


def is_gguf(source: Any) -> bool:
    """Whether `source` names a GGUF file (a path ending in ``.gguf``)."""
    return isinstance(source, (str, Path)) and str(source).lower().endswith(".gguf")


def require_gguf() -> None:
    """Raise an ImportError naming the extra when a package that reading GGUF files needs is missing."""
    missing = []
    for package in ("gguf", "accelerate"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(f"Loading a GGUF file needs the {' and '.join(missing)} package(s): {GGUF_INSTALL} "
                          f"(or pip install {' '.join(missing)}).")


def gguf_location(source: str | Path) -> tuple[str, str]:
    """(folder, file name) of a GGUF file, as `from_pretrained(folder, gguf_file=name)` takes them."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {str(source)!r}. Give the path of a .gguf file (a folder that holds "
                                "config.json and safetensors weights is loaded as usual).")
    return str(path.parent), path.name


def load_gguf_tokenizer(source: str | Path) -> Any:
    """The tokenizer stored in the GGUF file (vocabulary, merges, special tokens, chat template)."""
    from transformers import AutoTokenizer

    require_gguf()
    folder, name = gguf_location(source)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_gguf_model(source: str | Path, auto_class: Any, **kwargs: Any) -> Any:
    """The model in the GGUF file, de-quantized to float32, as a plain model (no `quantization_config`).

    Args:
        source: the path of the .gguf file.
        auto_class: the transformers Auto class of the task (`AutoModelForCausalLM`, ...).
        **kwargs: more `from_pretrained` arguments (a classification head's labels).
    """
    require_gguf()
    folder, name = gguf_location(source)
    options: dict[str, Any] = {}
    from transformers import GgufConfig

    if "dequantize" in inspect.signature(GgufConfig).parameters:  # plain float weights, no kernel download
        options["quantization_config"] = GgufConfig(dequantize=True)
    loaded = auto_class.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **options, **kwargs)
    plain = rebuild_plain(loaded)
    log.info("loaded %s de-quantized to float32 (%s parameters)", name, f"{sum(p.numel() for p in plain.parameters()):,}")
    return plain


def rebuild_plain(model: Any) -> Any:
    """The same architecture built from `model`'s config without `quantization_config`, holding
    `model`'s weights and buffers (taken over, not copied: `model` is discarded): a model that
    `save_pretrained` accepts. Built on the meta device, so nothing is initialized twice."""
    config = copy.deepcopy(model.config)
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    originals = dict(model.named_modules())
    for name, module in plain.named_modules():  # non-persistent buffers (rotary tables) are not in the state dict
        for table in (module._buffers, module.__dict__):
            for key, value in list(table.items()):
                if isinstance(value, torch.Tensor) and value.is_meta:
                    table[key] = getattr(originals[name], key)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"Rebuilding the GGUF model left {left[:5]} without values.")
    plain.config.name_or_path = model.config.name_or_path
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    plain.eval()
    return plain
