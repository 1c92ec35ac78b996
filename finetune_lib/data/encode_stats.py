"""`EncodeStats`: what `Preprocessor.encode` did to a split (its own module, so the encoders of each
record kind, `finetune_lib.data.token_labels` included, fill it without importing the preprocessor)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EncodeStats"]


@dataclass
class EncodeStats:
    """What `encode` did: examples seen and truncated."""

    examples: int = 0
    truncated: int = 0
    truncated_indices: list[int] = field(default_factory=list)
    packed_rows: int | None = None  # rows after packing (None: not packed)
    packing_efficiency: float | None = None  # real tokens / (packed_rows * pack_length)
    conversations_shortened: int = 0  # conversations that lost their oldest exchanges to fit
    dropped_turns: int = 0  # messages dropped from them (a conversation cut as well counts in truncated)
