"""On a CPU, training steps of short sequences use SDPA's math kernel instead of its flash kernel.

torch's CPU flash-attention kernel is the faster one for inference at every length measured, but its
backward is slow on short sequences: forward and backward of a 16 x 12-head x 15-token x 32 batch
took 11.2 ms with it and 2.4 ms with the math kernel on the benchmark machine (bf16; 18.9 vs 9.8 ms
at 64 tokens, 17.5 vs 13.0 ms at 128, and flash ahead from 256 tokens: 117 vs 158 ms). Both compute
exact attention. SDPA picks flash whenever it is allowed, which in training is when attention
dropout is 0 (Llama, Qwen, Mistral and most recent configs; with dropout it already uses the math
kernel). So `FineTuner` allows only the math kernel around each CPU training micro-batch of at most
`MATH_MAX_LENGTH` tokens; evaluation and longer batches keep torch's choice.

Attention dropout: with dropout, the math kernel draws its mask over the attention probabilities with
torch's serial `bernoulli_` (about 0.4 ms for 16 x 12 heads x 15 x 15 on the benchmark machine, once
per layer and step). With `fast_dropout=True` the same micro-batches call `math_attention` instead
(through `torch.nn.functional.scaled_dot_product_attention`, which transformers' "sdpa" attention
looks up at each call), whose mask comes from `fast_dropout.keep_mask`. It is the math kernel's
computation written out (half-precision inputs computed in float32, as torch's math kernel does; the
same values without dropout, tested), with the counter-based dropout mask; calls without dropout,
with grouped-query `enable_gqa`, or off the CPU go to torch unchanged.

Example:
    >>> with training_attention(torch.device("cpu"), batch, fast_dropout=True):
    ...     model(**batch).loss.backward()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .fast_dropout import dropout as counter_dropout

#: longest sequence (tokens) whose training step uses the math kernel on a CPU
MATH_MAX_LENGTH = 128

_torch_sdpa = F.scaled_dot_product_attention


def math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention` computed as torch's math kernel does, with the dropout mask from
    `fast_dropout` (CPU tensors with dropout); anything else is passed to torch's SDPA."""
    if (dropout_p == 0.0 or enable_gqa or query.device.type != "cpu" or query.is_nested
            or (is_causal and attn_mask is not None)):
        return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
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
        probs = torch.softmax(scores, -1)
        if probs.isnan().any():  # fully masked rows (or NaN scores): torch's kernel gives such rows zeros
            probs = torch._safe_softmax(scores, -1)  # identical elsewhere; the plain softmax is 2x faster
        probs = counter_dropout(probs, dropout_p)
        return torch.matmul(probs, v).to(out_dtype)


@contextlib.contextmanager
def _math_attention_installed() -> Iterator[None]:
    F.scaled_dot_product_attention = math_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _torch_sdpa


def training_attention(device: torch.device, batch: Mapping[str, Any],
                       fast_dropout: bool = False) -> contextlib.AbstractContextManager[Any]:
    """The SDPA kernels allowed for one training micro-batch: math only on a CPU when every sequence
    in `batch` (its 2-D tensors) has at most `MATH_MAX_LENGTH` tokens, else torch's own choice. With
    `fast_dropout`, those short micro-batches also draw attention dropout with `math_attention`."""
    lengths = [v.shape[-1] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() == 2]
    if device.type != "cpu" or not lengths or max(lengths) > MATH_MAX_LENGTH:
        return contextlib.nullcontext()
    if not fast_dropout:
        return sdpa_kernel([SDPBackend.MATH])
    stack = contextlib.ExitStack()
    stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    stack.enter_context(_math_attention_installed())
    return stack
