"""Saving a model with LoRA adapters: the adapter folder peft loads, the base it needs, or merged weights.

* `save_adapter(model, path, base)` writes peft's adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) whose ``base_model_name_or_path`` is `base`;
  `peft.AutoPeftModelForCausalLM.from_pretrained(path)` loads the base from there and the adapter on
  top of it.
* `save_base(model, path)` writes the base model without its adapters, as plain safetensors that the
  Auto classes load: what an adapter points at when the base came from a GGUF file or a model object
  (there is no hub id or folder of it to point at).
* `save_merged(model, path)` writes a plain model with the adapters merged into the weights
  (``W + alpha / r * B @ A``, peft's `get_delta_weight`) and peft's `modules_to_save` copies in place
  of the originals: `AutoModelForCausalLM` and `pipeline("text-generation")` load it without peft.

The model itself is never changed: the weights are computed into a new state dict (peft's own
`merge_and_unload` would merge in place, and unmerging does not give back the same bits).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["base_state_dict", "save_adapter", "save_base", "save_merged"]

_ADAPTER = "default"


def _lora_layers(inner: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def base_state_dict(model: Any, merge: bool = False) -> dict[str, torch.Tensor]:
    """The weights of a peft `model` under the base model's own names: without the adapters (the base
    as it was, `modules_to_save` originals included), or with `merge=True` the adapters merged in and
    the trained `modules_to_save` copies in place of the originals. New tensors where values change;
    the others are the model's own (read-only use)."""
    inner = model.get_base_model()
    layers = _lora_layers(inner) if merge else {}
    saved, original = f".modules_to_save.{_ADAPTER}.", ".original_module."
    out: dict[str, torch.Tensor] = {}
    for key, tensor in inner.state_dict().items():
        leaf = key.rsplit(".", 1)[-1]
        if re.search(r"(^|\.)lora_", key):
            continue  # the adapter's own matrices (and dropout, which has no weights)
        if saved in key:
            if not merge:
                continue
            key = key.replace(saved, ".")
        elif original in key:
            if merge:
                continue
            key = key.replace(original, ".")
        elif ".base_layer." in key:
            name = key[: -len(f".base_layer.{leaf}")]
            key = key.replace(".base_layer.", ".")
            if merge and leaf == "weight" and name in layers and _ADAPTER in layers[name].lora_A:
                tensor = tensor + layers[name].get_delta_weight(_ADAPTER).to(tensor.dtype)
        out[key] = tensor
    return out


def _untie_if_changed(inner: Any, weights: dict[str, torch.Tensor], config: Any) -> Any:
    """A config copy that unties the embeddings when the merged input and output embeddings differ."""
    import copy

    config = copy.deepcopy(config)
    if not getattr(config, "tie_word_embeddings", False):
        return config
    names = {id(m): n for n, m in inner.named_modules()}
    inp, outp = inner.get_input_embeddings(), inner.get_output_embeddings()
    if inp is None or outp is None:
        return config
    a = weights.get(f"{_plain_name(names.get(id(inp), ''))}.weight")
    b = weights.get(f"{_plain_name(names.get(id(outp), ''))}.weight")
    if a is not None and b is not None and (a.shape != b.shape or not torch.equal(a, b)):
        config.tie_word_embeddings = False
    return config


def _plain_name(name: str) -> str:
    return re.sub(r"\.(original_module|modules_to_save\.\w+)$", "", name)


def _save_plain(model: Any, weights: dict[str, torch.Tensor], path: Path) -> None:
    """`weights` (base names) written as a plain transformers model: config.json + model.safetensors.
    The model is built on the meta device and takes the tensors as they are (no copy, no init)."""
    inner = model.get_base_model()
    config = _untie_if_changed(inner, weights, inner.config)
    with torch.device("meta"):
        plain = type(inner)(config)
    _, unexpected = plain.load_state_dict(weights, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing or unexpected:
        raise RuntimeError(f"The base weights do not fit a plain {type(inner).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}.")
    plain.save_pretrained(path)


def save_base(model: Any, path: str | Path) -> Path:
    """Write the base of peft `model` (adapters left out) to `path` as a plain model; returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _save_plain(model, base_state_dict(model, merge=False), path)
    return path


def save_merged(model: Any, path: str | Path) -> Path:
    """Write peft `model` with its adapters merged in to `path` as a plain model; returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _save_plain(model, base_state_dict(model, merge=True), path)
    return path


def save_adapter(model: Any, path: str | Path, base: str) -> Path:
    """Write the adapter folder of peft `model` to `path`, pointing at the base model `base` (a hub id
    or a folder; peft reads a relative folder from the working directory). Returns `path`."""
    path = Path(path)
    config = model.peft_config[_ADAPTER]
    before = config.base_model_name_or_path
    config.base_model_name_or_path = base
    try:
        model.save_pretrained(path)
    finally:
        config.base_model_name_or_path = before
    written = json.loads((path / "adapter_config.json").read_text())
    if written.get("base_model_name_or_path") != base:  # peft versions that take the name from the model
        written["base_model_name_or_path"] = base
        (path / "adapter_config.json").write_text(json.dumps(written, indent=2, sort_keys=True))
    return path
