"""On a CPU, training steps of short sequences use SDPA's math kernel instead of its flash kernel.

torch's CPU flash-attention kernel is the faster one for inference at every length measured, but its
backward is slow on short sequences: forward and backward of a 16 x 12-head x 15-token x 32 batch
took 11.2 ms with it and 2.4 ms with the math kernel on the benchmark machine (bf16; 18.9 vs 9.8 ms
at 64 tokens, 17.5 vs 13.0 ms at 128, and flash ahead from 256 tokens: 117 vs 158 ms). Both compute
exact attention. SDPA picks flash whenever it is allowed, which in training is when attention
dropout is 0 (Llama, Qwen, Mistral and most recent configs; with dropout it already uses the math
kernel). So `FineTuner` allows only the math kernel around each CPU training micro-batch of at most
`MATH_MAX_LENGTH` tokens, through torch's own `torch.nn.attention.sdpa_kernel` context manager;
evaluation and longer batches keep torch's choice. On by default: it changes which exact kernel
runs, not what is computed, and no function is replaced (`scaled_dot_product_attention` stays
torch's). Like any use of `sdpa_kernel`, the choice is torch's backend switch for the length of the
micro-batch (forward, `loss_computed` callbacks and backward); torch puts the previous switches back
when it ends.

Example:
    >>> with training_attention(torch.device("cpu"), batch):
    ...     model(**batch).loss.backward()
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

#: longest sequence (tokens) whose training step uses the math kernel on a CPU
MATH_MAX_LENGTH = 128


def training_attention(device: torch.device, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """The SDPA kernels allowed for one training micro-batch: math only on a CPU when every sequence
    in `batch` (its 2-D tensors) has at most `MATH_MAX_LENGTH` tokens, else torch's own choice."""
    lengths = [v.shape[-1] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() == 2]
    if device.type != "cpu" or not lengths or max(lengths) > MATH_MAX_LENGTH:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
