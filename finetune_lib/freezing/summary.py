"""The table of trainable and frozen parameters per part, returned by `freeze` and `LayerFreezer.apply`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .blocks import ModelParts

__all__ = ["SummaryRow", "FreezeSummary", "build_summary"]


@dataclass
class SummaryRow:
    """One line of the summary.

    Attributes:
        part: "embeddings", "block <i>" or "head".
        module: where the part lives (a module path, or the common prefix of its parameters).
        trainable: number of trainable parameter values (elements) in the part.
        frozen: number of frozen parameter values in the part.
        lr_scale: learning-rate multiplier of the part under layer-wise decay (None without decay).
    """

    part: str
    module: str
    trainable: int
    frozen: int
    lr_scale: float | None = None

    @property
    def status(self) -> str:
        """"trained", "frozen", "partial" or "empty"."""
        if self.trainable and self.frozen:
            return "partial"
        if self.trainable:
            return "trained"
        return "frozen" if self.frozen else "empty"


@dataclass
class FreezeSummary:
    """Trainable and frozen parameters per part; `print(summary)` shows a table.

    Attributes:
        rows: one `SummaryRow` per part, embeddings first, then blocks bottom to top, then the head.
        trainable_names: names of the trainable parameters (canonical names, tied weights once).
        frozen_names: names of the frozen parameters.
        notes: remarks such as tied weights.
    """

    rows: list[SummaryRow]
    trainable_names: list[str]
    frozen_names: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r.frozen for r in self.rows)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def row(self, part: str) -> SummaryRow:
        """The row of one part ("embeddings", "block 3", "head")."""
        for r in self.rows:
            if r.part == part:
                return r
        raise KeyError(f"No part {part!r}; parts are {', '.join(r.part for r in self.rows)}.")

    def to_dicts(self) -> list[dict]:
        """The rows as plain dicts (for logging or a DataFrame)."""
        return [{"part": r.part, "module": r.module, "trainable": r.trainable, "frozen": r.frozen,
                 "lr_scale": r.lr_scale, "status": r.status} for r in self.rows]

    def __str__(self) -> str:
        header = ("part", "module", "trainable", "frozen", "lr scale")
        body = [(r.part, r.module, f"{r.trainable:,}", f"{r.frozen:,}",
                 "-" if r.lr_scale is None else f"{r.lr_scale:.4g}") for r in self.rows]
        body.append(("total", "", f"{self.trainable:,}", f"{self.frozen:,}", ""))
        widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]

        def fmt(cells: tuple) -> str:
            out = []
            for i, cell in enumerate(cells):
                out.append(str(cell).rjust(widths[i]) if i in (2, 3) else str(cell).ljust(widths[i]))
            return "  ".join(out).rstrip()

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(cells) for cells in body]
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        lines.append(f"trainable: {self.trainable:,} of {self.total:,} parameters ({share:.1f}%)")
        lines += self.notes
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"FreezeSummary(trainable={self.trainable:,}, frozen={self.frozen:,}, "
                f"parts={len(self.rows)})")


def _where(names: list[str]) -> str:
    """Module paths of `names`: listed when few, else their common prefix."""
    modules = list(dict.fromkeys(n.rsplit(".", 1)[0] if "." in n else n for n in names))
    if len(modules) <= 3:
        return ", ".join(modules)
    split = [m.split(".") for m in modules]
    prefix = split[0]
    for parts in split[1:]:
        k = 0
        while k < min(len(prefix), len(parts)) and prefix[k] == parts[k]:
            k += 1
        prefix = prefix[:k]
    if prefix:
        return ".".join(prefix)
    return ", ".join(dict.fromkeys(m[0] for m in split))


def build_summary(model: nn.Module, parts: ModelParts, lr_scale: Callable[[str], float] | None = None) -> FreezeSummary:
    """Summarize the current `requires_grad` state of `model`, part by part."""
    params = dict(model.named_parameters())

    def row(part: str, module: str, names: list[str]) -> SummaryRow:
        trainable = sum(params[n].numel() for n in names if params[n].requires_grad)
        frozen = sum(params[n].numel() for n in names if not params[n].requires_grad)
        scale = float(lr_scale(names[0])) if (lr_scale is not None and names) else None
        return SummaryRow(part, module, trainable, frozen, scale)

    rows = [row("embeddings", _where(parts.embeddings), parts.embeddings)]
    for blk in parts.blocks:
        module = blk.name
        if blk.attached:
            module += " + " + ", ".join(dict.fromkeys(n.rsplit(".", 1)[0] for n in blk.attached))
        rows.append(row(f"block {blk.index}", module, blk.params))
    rows.append(row("head", _where(parts.head), parts.head))
    if not parts.embeddings:
        rows = rows[1:]
    if not parts.head:
        rows = rows[:-1]

    notes = []
    for name, others in parts.aliases.items():
        state = "trainable" if params[name].requires_grad else "frozen"
        notes.append(f"tied: {', '.join(others)} = {name} ({state}; follows {parts.part_of[name]})")
    trainable_names = [n for n, p in params.items() if p.requires_grad]
    frozen_names = [n for n, p in params.items() if not p.requires_grad]
    return FreezeSummary(rows, trainable_names, frozen_names, notes)
