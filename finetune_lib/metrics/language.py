"""Language-model metrics over logits: perplexity and token accuracy.

Both consume ``update(logits, target)`` with logits ``[B, T, V]`` and target ``[B, T]`` already
aligned (``logits[:, t]`` predicts ``target[:, t]``; for a causal LM pass ``logits[:, :-1]`` and
``target[:, 1:]``), and skip target positions equal to `ignore_index` (prompt, padding). They keep
two numbers each, so memory does not grow with the evaluation set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Metric, NoDataError, no_data


def check_lm_inputs(metric: Metric, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """Raises a ValueError that names the expected shapes when `logits` / `target` do not fit."""
    where = f"{type(metric).__name__}.update(logits, target)"
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"{where} expects tensors, got {type(logits).__name__} and {type(target).__name__}")
    if logits.dim() != 3 or target.dim() != 2 or logits.shape[:2] != target.shape:
        raise ValueError(
            f"{where} expects logits [B, T, V] and target [B, T] with the same B and T (already aligned: for a "
            f"causal LM pass logits[:, :-1] and target[:, 1:]); got logits {tuple(logits.shape)} and target "
            f"{tuple(target.shape)}."
        )
    if target.is_floating_point():
        raise ValueError(f"{where}: target must hold integer token ids, got dtype {target.dtype}")
    vocab = logits.shape[-1]
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"{where}: target holds token id {int(target[bad][0])}, outside the vocabulary [0, {vocab}) and not "
            f"ignore_index={ignore_index}; mark positions without a loss with ignore_index."
        )


def example_nll(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example NLL sum (float64, CPU) and count of non-ignored tokens (int64, CPU), each ``[B]``."""
    b, t, v = logits.shape
    target = target.to(logits.device)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half / bfloat16: take the log-softmax in float32
    nll = F.cross_entropy(
        logits.reshape(-1, v), target.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return nll.view(b, t).double().sum(1).cpu(), (target != ignore_index).sum(1).cpu()


class Perplexity(Metric):
    """exp of the mean negative log-likelihood over the non-ignored target tokens.

    The NLL sum is accumulated in float64 with the token count, so the value does not depend on
    batch size, padding, or how the evaluation set was split.

    Args:
        ignore_index: target id that takes no loss (prompt and padding positions).
        name: result key (default ``"perplexity"``).

    Example:
        >>> m = Perplexity()
        >>> m.update(torch.zeros(2, 3, 10), torch.tensor([[1, 2, -100], [3, -100, -100]]))
        >>> round(m.compute(), 6)  # uniform over 10 tokens
        10.0
    """

    name = "perplexity"
    input = "logits"
    tasks = ("causal_lm", "seq2seq")  # token logits [B, T, V]
    higher_is_better = False
    nll_sum: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, ignore_index: int = -100, name: str | None = None) -> None:
        super().__init__(name)
        self.ignore_index = ignore_index
        self.add_state("nll_sum", 0.0)
        self.add_state("tokens", 0)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: logits ``[B, T, V]``, target ``[B, T]``."""
        check_lm_inputs(self, logits, target, self.ignore_index)
        nll, count = example_nll(logits, target, self.ignore_index)
        self.nll_sum += nll.sum()
        self.tokens += count.sum()

    def compute(self) -> float:
        """The perplexity (>= 1)."""
        if int(self.tokens) == 0:
            raise no_data(self, " (every target position was ignore_index)")
        return math.exp(float(self.nll_sum) / int(self.tokens))

    def example_stats(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` float64 rows: NLL sum and token count of each example."""
        check_lm_inputs(self, logits, target, self.ignore_index)
        nll, count = example_nll(logits, target, self.ignore_index)
        return torch.stack([nll, count.double()], 1)

    def compute_from_stats(self, stats: torch.Tensor) -> float:  # type: ignore[override]
        """Perplexity of the examples whose `example_stats` rows are given."""
        nll, tokens = stats.sum(0).tolist() if len(stats) else (0.0, 0.0)
        if tokens == 0:
            raise NoDataError("no target tokens in this resample")
        return math.exp(nll / tokens)


class TokenAccuracy(Metric):
    """Fraction of non-ignored target tokens where the argmax of the logits is the target token.

    Args:
        ignore_index: target id to skip (prompt and padding positions).
        name: result key (default ``"token_accuracy"``).

    Example:
        >>> m = TokenAccuracy()
        >>> logits = torch.nn.functional.one_hot(torch.tensor([[1, 2, 0]]), 4).float()
        >>> m.update(logits, torch.tensor([[1, 3, -100]]))
        >>> m.compute()
        0.5
    """

    name = "token_accuracy"
    input = "logits"
    tasks = ("causal_lm", "seq2seq")  # token logits [B, T, V]
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, ignore_index: int = -100, name: str | None = None) -> None:
        super().__init__(name)
        self.ignore_index = ignore_index
        self.add_state("correct", 0)
        self.add_state("total", 0)

    def _counts(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_lm_inputs(self, logits, target, self.ignore_index)
        target = target.to(logits.device)
        mask = target != self.ignore_index
        correct = ((logits.argmax(-1) == target) & mask).sum(1)
        return correct.cpu(), mask.sum(1).cpu()

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: logits ``[B, T, V]``, target ``[B, T]``."""
        correct, total = self._counts(logits, target)
        self.correct += correct.sum()
        self.total += total.sum()

    def compute(self) -> float:
        """Token accuracy in [0, 1]."""
        if int(self.total) == 0:
            raise no_data(self, " (every target position was ignore_index)")
        return int(self.correct) / int(self.total)

    def example_stats(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` int64 rows: correct tokens and tokens of each example."""
        return torch.stack(self._counts(logits, target), 1)

    def compute_from_stats(self, stats: torch.Tensor) -> float:  # type: ignore[override]
        """Token accuracy of the examples whose `example_stats` rows are given."""
        correct, total = stats.sum(0).tolist() if len(stats) else (0, 0)
        if total == 0:
            raise NoDataError("no target tokens in this resample")
        return correct / total
