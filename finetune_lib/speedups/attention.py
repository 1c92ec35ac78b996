"""Attention-probability dropout with the counter-based masks of `fast_dropout`, for one model.

**Gain.** With attention dropout (BERT-style models), torch's SDPA takes its math kernel, which
draws the mask over the attention probabilities with torch's serial `bernoulli_`: about 0.4 ms for
16 x 12 heads x 15 x 15 on the benchmark machine, once per layer and step. `math_attention` is the
math kernel's computation written out (half-precision inputs computed in float32, as torch's math
kernel does; fully masked rows give zeros, as torch's kernel does) with the mask from
`fast_dropout.keep_mask`. Measured per MiniLM step: 1.05x with blocks 0-3 frozen, 1.04x for full
fine-tuning (docs/topics/cpu-speed.md).

**How it reaches the model.** Through transformers' attention interface, not by replacing torch's
function: the attention function is registered once under `NAME` (`AttentionInterface.register`,
with SDPA's mask function under the same name), and `counter_dropout_attention(model)` sets that
model's attention implementation to it for the length of the block (`set_attn_implementation`),
then back to "sdpa". Other models, other threads and `torch.nn.functional.scaled_dot_product_attention`
itself are untouched. Models that do not use transformers' "sdpa" attention (eager, flash, a model
that cannot switch) are left alone: their attention dropout stays torch's.

**Caveats.** The masks are not torch's (see `fast_dropout`). Only CPU calls with dropout of at most
`MAX_KEYS` keys take this path (evaluation passes dropout 0); calls with grouped-query heads, a
position bias (T5), a cache longer than the query, or anything else go to transformers' own "sdpa"
function unchanged. Used by `FineTuner(cpu_speedups=True)` on a CPU, during `fit`.

Example:
    >>> with counter_dropout_attention(model) as switched:   # switched: the model uses it now
    ...     model(**batch).loss.backward()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .fast_dropout import dropout as counter_dropout

#: the name of the attention implementation in transformers' `AttentionInterface` ("sdpa" in it:
#: transformers checks such names as it checks "sdpa")
NAME = "finetune_lib_sdpa_counter_dropout"

#: longest key sequence that takes this path (training steps up to this length use SDPA's math
#: kernel on a CPU anyway, see `finetune_lib.training.cpu_attention`; longer ones keep torch's kernels)
MAX_KEYS = 128


def _probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension; rows that are entirely -inf (fully masked) give zeros, as in
    torch's SDPA kernels (plain softmax would give NaN there)."""
    probs = torch.softmax(scores, -1)
    if probs.isnan().any():  # rare: only then the check of every row (the plain softmax is the fast path)
        probs = probs.masked_fill((scores == float("-inf")).all(-1, keepdim=True), 0.0)
    return probs


def math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention` computed as torch's math kernel does, with the dropout mask from
    `fast_dropout` (CPU tensors with dropout); anything else is passed to torch's SDPA.

    Example:
        >>> out = math_attention(q, k, v, attn_mask=mask, dropout_p=0.1)   # q, k, v: (batch, heads, L, d)
    """
    if (dropout_p == 0.0 or enable_gqa or query.device.type != "cpu" or query.is_nested
            or (is_causal and attn_mask is not None)):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if torch.is_autocast_enabled("cpu"):  # SDPA runs in autocast's lower precision: inputs cast first
        low = torch.get_autocast_dtype("cpu")
        query, key, value = (t.to(low) if t.is_floating_point() else t for t in (query, key, value))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(low)
    out_dtype = query.dtype
    with torch.autocast("cpu", enabled=False):
        # half-precision inputs are computed in float32 (torch's math kernel does the same)
        q, k, v = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (query, key, value))
        root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
        scores = torch.matmul(q * root, k.transpose(-2, -1) * root)
        if is_causal:
            causal = torch.ones(scores.shape[-2], scores.shape[-1], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                      else scores + attn_mask)
        probs = counter_dropout(_probabilities(scores), dropout_p)
        return torch.matmul(probs, v).to(out_dtype)


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention function, with `math_attention` for CPU calls with dropout (the
    signature and outputs of `transformers.integrations.sdpa_attention.sdpa_attention_forward`)."""
    q_length, kv_length = query.shape[2], key.shape[2]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if (dropout == 0.0 or query.device.type != "cpu" or position_bias is not None or kv_length > MAX_KEYS
            or getattr(module, "num_key_value_groups", 1) > 1 or kwargs.get("softcap") is not None
            or (causal and attention_mask is None and kv_length != q_length)):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, is_causal=is_causal, position_bias=position_bias,
                                               **kwargs)
    causal = q_length > 1 and attention_mask is None and causal  # as transformers' sdpa function decides
    out = math_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=causal,
                         scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register `attention_forward` (and SDPA's mask function) under `NAME` with transformers; a new
    name, so no model changes until one is switched to it. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def _configs(model: nn.Module) -> list[Any]:
    """The configs of `model` and of the transformers models inside it, sub-configs included."""
    found: dict[int, Any] = {}
    todo = [getattr(m, "config", None) for m in model.modules() if hasattr(m, "set_attn_implementation")]
    while todo:
        config = todo.pop()
        if config is None or id(config) in found:
            continue
        found[id(config)] = config
        todo += [getattr(config, name, None) for name in getattr(config, "sub_configs", {}) or {}]
    return list(found.values())


def switchable(model: nn.Module) -> bool:
    """True when `model` is a transformers model whose attention is "sdpa" throughout and that can switch
    its attention implementation (models that look the function up in `AttentionInterface`)."""
    if not hasattr(model, "set_attn_implementation"):
        return False
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        return False
    configs = _configs(model)
    return bool(configs) and all(getattr(c, "_attn_implementation", None) == "sdpa" for c in configs)


@contextlib.contextmanager
def counter_dropout_attention(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block `model`'s attention runs `attention_forward` (see the module docstring), then
    "sdpa" again; yields whether the model was switched (False: left as it is)."""
    if not enabled or not switchable(model):
        yield False
        return
    register()
    model.set_attn_implementation(NAME)  # type: ignore[operator]
    try:
        yield model.config._attn_implementation == NAME  # type: ignore[union-attr]
    finally:
        if any(getattr(c, "_attn_implementation", None) == NAME for c in _configs(model)):
            model.set_attn_implementation("sdpa")  # type: ignore[operator]
