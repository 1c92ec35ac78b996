"""Sequence packing for causal LM fine-tuning: several examples per row, attention kept inside each.

`Preprocessor(pack=True)` encodes the training split as usual (same truncation, same prompt masking),
then packs the encoded examples into rows of at most `pack_length` tokens with best-fit-decreasing
bin packing. A packed feature holds:

- `input_ids`: the examples' tokens, one after the other;
- `labels`: their labels, with the first label of every example set to -100. In an unpacked row
  that label is never learned (nothing comes before it: `labels[t]` is predicted from position
  `t - 1`); in a packed row it would be predicted from the previous example's last token, which
  must not be learned. So packed and unpacked rows learn exactly the same target tokens, and the
  per-step normalization (targets counted as `labels[:, 1:] != -100`) stays exact;
- `position_ids`: restarting at 0 for each example, as each would see them alone;
- `seq_lengths`: the length of each example in the row (metadata, not given to the model);
- `example_ids`: the index of each example in the encoded split (metadata, not given to the model).

`collate_packed` pads the rows and builds a 4-D block-diagonal causal mask `[B, 1, T, T]`: boolean
(True where a query may attend) for sdpa attention, float32 and additive (0 where a query may attend,
the float32 minimum elsewhere) for eager attention; FineTuner picks the form for its model
(`packed_mask_dtype`) and refuses attention that cannot take a 4-D mask (`check_packing_support`).
transformers 5.x passes a 4-D mask through unchanged to the attention: eager attention adds it to
the scores (so it must be additive: a boolean mask there would be silently wrong), sdpa takes it as
`attn_mask` (a boolean mask there is cheaper: an isolated call measured 25% faster than with a
float32 mask under bf16 autocast). Each row always has its diagonal, so no row is all masked.
Rejected (transformers 5.24, GPT-2 and Llama, CPU): position_ids alone, no `attention_mask` (what
`DataCollatorWithFlattening` relies on): transformers only derives the packed mask from
`position_ids` when there is no cache, and GPT-2 and Llama create a `DynamicCache` during training
unless `use_cache=False` is passed, so with the default the examples silently attend to each other.

The float32 mask costs `4 * B * T * T` bytes per micro-batch (32 MiB for 8 rows of 1,024 tokens). Flash
attention does not take a 4-D mask: `check_packing_support(model)` raises for it.

Example:
    >>> pre = Preprocessor(pack=True, max_length=512).setup(tokenizer, "causal_lm")
    >>> rows = pre.encode(train_records, "train")       # packed; other splits stay unpacked
    >>> pre.stats["train"].packed_rows, pre.stats["train"].packing_efficiency
    (118, 0.97)
    >>> batch = pre.collate(rows[:4])  # input_ids, labels, position_ids, attention_mask [4, 1, T, T]

Throughput (BENCHMARKS.md, workload 3: a GPT-2 of 6 layers, 256 wide, on 1,200 prompt/target
examples, 2 CPU cores, bf16): packed rows give 1.37x the target tokens/s of unpacked rows in random
order, and 1.12x over length-grouped unpacked rows, which already remove almost all padding (what
packing adds over them is fewer optimizer steps for the same tokens).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from ..speedups.attention import NAME as SPEEDUP_ATTENTION
from .collate import IGNORE_INDEX, collate

#: keys of a packed feature that describe the packing and are not model inputs
META_KEYS = ("seq_lengths", "example_ids")

#: attention implementations that take sdpa's boolean 4-D mask (cpu_speedups' attention is sdpa's, with its dropout)
SDPA_LIKE = ("sdpa", SPEEDUP_ATTENTION)
#: attention implementations that honour a 4-D mask
SUPPORTED_ATTENTION = ("eager", *SDPA_LIKE)


def plan_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: lists of indices whose lengths sum to at most `capacity`.

    Examples are placed longest first, each into the fullest row that still has room for it (a new
    row when none has). Deterministic: ties keep the examples' order.

    Example:
        >>> plan_bins([5, 3, 9, 4], capacity=10)
        [[2], [0, 3], [1]]
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 token, got {capacity}.")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"Examples {too_long[:10]} are longer than the row capacity of {capacity} tokens; "
                         "truncate them first (Preprocessor does).")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted: the first with room >= n fits best
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            bins.append([i])
            room, b = capacity - n, len(bins) - 1
        else:
            room, b = free.pop(at)
            bins[b].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack_features(features: Sequence[dict[str, Any]], pack_length: int) -> list[dict[str, Any]]:
    """Pack encoded causal LM features (`input_ids`, `labels`) into rows of at most `pack_length`.

    See the module docstring for what a packed feature holds.
    """
    bins = plan_bins([len(f["input_ids"]) for f in features], pack_length)
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            f = features[i]
            n = len(f["input_ids"])
            ids += f["input_ids"]
            labels += [IGNORE_INDEX] + list(f["labels"][1:])  # never predicted across examples
            positions += range(n)
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions,
                     "seq_lengths": [len(features[i]["input_ids"]) for i in members], "example_ids": list(members)})
    return rows


def block_causal_mask(seq_lengths: Sequence[Sequence[int]], width: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mask `[B, 1, width, width]` of where a token may attend (an earlier or the same token of its own
    example). Additive for a float `dtype` (0 allowed, the dtype's minimum elsewhere; what eager
    attention needs), or `True` where allowed for `torch.bool` (what sdpa takes; measured here 25%
    faster forward and backward than a float32 mask under bf16 autocast). Padding after the examples
    attends only to padding, so no row is fully masked."""
    segments = torch.zeros(len(seq_lengths), width, dtype=torch.long)
    for r, lengths in enumerate(seq_lengths):
        ids = torch.repeat_interleave(torch.arange(1, len(lengths) + 1), torch.as_tensor(list(lengths)))
        segments[r, : len(ids)] = ids
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    if dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def collate_packed(features: Sequence[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None,
                   padding_side: str = "right", mask_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Pad packed rows (right side) and add their block-diagonal causal `attention_mask` (see
    `block_causal_mask` for `mask_dtype`)."""
    if padding_side != "right":
        raise ValueError("Packed rows are padded on the right; padding_side='left' is not supported with packing.")
    inputs = [{k: v for k, v in f.items() if k not in META_KEYS and k != "attention_mask"} for f in features]
    batch = collate(inputs, pad_token_id, pad_to_multiple_of, padding_side)
    batch["attention_mask"] = block_causal_mask([f["seq_lengths"] for f in features], batch["input_ids"].shape[1],
                                                mask_dtype)
    return batch


def is_packed(feature: dict[str, Any]) -> bool:
    """True for a feature made by `pack_features`."""
    return "seq_lengths" in feature


def check_packing_support(model: Any) -> None:
    """Raise when the model cannot keep attention inside each packed example.

    Packed batches carry a 4-D additive mask, which eager and sdpa attention honour in
    transformers 5.x; flash attention and encoder-decoders do not.
    """
    config = getattr(model, "config", None)
    if config is None:
        return
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("Packing is for decoder-only (causal LM) models; this model is an encoder-decoder.")
    impl = getattr(config, "_attn_implementation", None)
    if impl is not None and impl not in SUPPORTED_ATTENTION:
        raise ValueError(f"Packing needs attention that takes a 4-D mask ({', '.join(SUPPORTED_ATTENTION)}); "
                         f"this model uses {impl!r}. Load it with attn_implementation='sdpa', or set "
                         "Preprocessor(pack=False).")


def packed_mask_dtype(model: Any) -> torch.dtype:
    """The mask form packed rows should carry for `model` (after `check_packing_support`): boolean for
    sdpa, additive float32 for eager attention (which adds the mask to its scores)."""
    check_packing_support(model)
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return torch.bool if impl in SDPA_LIKE else torch.float32


def packing_efficiency(rows: Sequence[dict[str, Any]], pack_length: int) -> float:
    """Real tokens / (rows * pack_length)."""
    if not rows:
        return 0.0
    return sum(len(r["input_ids"]) for r in rows) / (len(rows) * pack_length)
