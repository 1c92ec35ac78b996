"""`freeze` (a pure function) and `LayerFreezer` (the same, as a training callback).

What is trained, in order of precedence (later rules win):

1. blocks: the top `train_last` blocks, or all but the first `freeze_first`, or the top
   `ceil(train_fraction * n_blocks)`; with none of the three, every block (or none when `include` is
   given, so `include` alone trains only what it names, plus the head);
2. the embeddings are frozen unless `freeze_embeddings=False`;
3. the head is trained unless `freeze_head=True`;
4. parameters matching `include` are trained;
5. parameters matching `exclude` are frozen (also never unfrozen by gradual unfreezing).

With an adapter (a peft model, e.g. `FineTuner(..., adapter=LoRA(...))`) the base weights stay frozen:
only the adapter's own parameters train (and peft's `modules_to_save`), and the blocks rule above
says where the adapters were put (`trained_block_count`); the frozen prefix still runs without
autograd and can be cached. `include`, `freeze_embeddings=False` and gradual unfreezing, which
would train base weights, are refused with an adapter (`check_adapter`).

Patterns are matched against every name of a parameter (tied weights have several), as a glob on
the whole name or as a regular expression found in it (see `compile_patterns`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from ..events import Callback, TrainState
from .adapted import adapter_parameters, block_paths
from .blocks import ModelParts, compile_patterns, find_parts
from .cache import PrefixCache
from .nograd import NoGradPrefix
from .summary import FreezeSummary, build_summary

__all__ = ["freeze", "LayerFreezer", "trainable_selection", "layerwise_lr_scales", "adapter_parameters"]

logger = logging.getLogger(__name__)

UNFREEZE_UNITS = ("steps", "epochs")


def _check_int(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a non-negative integer (a number of blocks), got {value!r}.")


def _validate(train_last: int | None, freeze_first: int | None, train_fraction: float | None) -> None:
    _check_int("train_last", train_last)
    _check_int("freeze_first", freeze_first)
    given = [k for k, v in (("train_last", train_last), ("freeze_first", freeze_first),
                            ("train_fraction", train_fraction)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"Give at most one of train_last, freeze_first and train_fraction, not {' and '.join(given)}.")
    if train_fraction is not None and not (0.0 <= float(train_fraction) <= 1.0):
        raise ValueError(f"train_fraction must be between 0 and 1 (the share of top blocks to train), got {train_fraction!r}.")


def _trained_block_count(n: int, train_last: int | None, freeze_first: int | None,
                         train_fraction: float | None, has_include: bool) -> int:
    if train_last is not None:
        if train_last > n:
            raise ValueError(f"train_last={train_last} but the model has only {n} blocks; use train_last<={n}.")
        return train_last
    if freeze_first is not None:
        if freeze_first > n:
            raise ValueError(f"freeze_first={freeze_first} but the model has only {n} blocks; use freeze_first<={n}.")
        return n - freeze_first
    if train_fraction is not None:
        return min(n, math.ceil(float(train_fraction) * n - 1e-9))
    return 0 if has_include else n


def _matching(parts: ModelParts, names: Iterable[str], patterns: list[tuple[str, Callable[[str], bool]]],
              kind: str) -> set[str]:
    names = list(names)
    out: set[str] = set()
    for pattern, match in patterns:
        hits = {n for n in names if any(match(a) for a in parts.all_names(n))}
        if not hits:
            sample = ", ".join(names[:3] + (["..."] if len(names) > 3 else []) + names[-2:])
            raise ValueError(f"{kind} pattern {pattern!r} matches no parameter name; names look like: {sample}")
        out |= hits
    return out


def trainable_selection(
    model: nn.Module,
    parts: ModelParts,
    *,
    train_last: int | None = None,
    freeze_first: int | None = None,
    train_fraction: float | None = None,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    freeze_embeddings: bool = True,
    freeze_head: bool = False,
) -> tuple[set[str], set[str]]:
    """The names to train (canonical names) and the names matched by `exclude`, without changing `model`."""
    _validate(train_last, freeze_first, train_fraction)
    names = [n for n, _ in model.named_parameters()]
    inc, exc = compile_patterns(include), compile_patterns(exclude)
    n = len(parts.blocks)
    k = _trained_block_count(n, train_last, freeze_first, train_fraction, bool(inc))
    train: set[str] = set()
    for blk in parts.blocks[n - k:]:
        train.update(blk.params)
    if not freeze_embeddings:
        train.update(parts.embeddings)
    if not freeze_head:
        train.update(parts.head)
    train |= _matching(parts, names, inc, "include")
    excluded = _matching(parts, names, exc, "exclude")
    return train - excluded, excluded


def layerwise_lr_scales(parts: ModelParts, decay: float) -> dict[str, float]:
    """Learning-rate multipliers of layer-wise decay: the head and the top block get 1.0, block `i` from
    the top (`i = 0` for the top block) gets `decay ** i`, the embeddings `decay ** n_blocks` (the
    lowest). Aliases of tied weights are included."""
    n = len(parts.blocks)
    scales: dict[str, float] = {}
    for name, part in parts.part_of.items():
        if part == "head":
            scales[name] = 1.0
        elif part == "embeddings":
            scales[name] = decay**n
        else:
            scales[name] = decay ** (n - 1 - int(part.split()[1]))
    return scales


def freeze(
    model: nn.Module,
    *,
    train_last: int | None = None,
    freeze_first: int | None = None,
    train_fraction: float | None = None,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    freeze_embeddings: bool = True,
    freeze_head: bool = False,
    blocks: str | Sequence[str] | None = None,
) -> FreezeSummary:
    """Freeze parameters of `model` in place (sets `requires_grad`) and return the summary.

    Args:
        model: the model (any architecture whose blocks `find_parts` can find).
        train_last: train the top N blocks.
        freeze_first: freeze the first N blocks, train the others.
        train_fraction: train the top `ceil(fraction * n_blocks)` blocks.
        include: name patterns (glob or regex) of parameters to train as well.
        exclude: name patterns of parameters to keep frozen whatever the other settings say.
        freeze_embeddings: freeze the embeddings (default True).
        freeze_head: freeze the task head too (default False: the head trains).
        blocks: module path(s) of the block list(s), when discovery needs help.

    Example:
        >>> print(freeze(model, train_last=2))
    """
    parts = find_parts(model, blocks)
    train, _ = trainable_selection(model, parts, train_last=train_last, freeze_first=freeze_first,
                                   train_fraction=train_fraction, include=include, exclude=exclude,
                                   freeze_embeddings=freeze_embeddings, freeze_head=freeze_head)
    for name, param in model.named_parameters():
        param.requires_grad_(name in train)
    return build_summary(model, parts)


class LayerFreezer(Callback):
    """Freeze the early layers and train the last ones, on any architecture; optionally unfreeze one more
    block every K steps or epochs (top-down) and scale learning rates layer by layer.

    Used by `FineTuner` (which calls `apply`, builds the optimizer with `lr_scale`, registers the freezer
    as a callback, and on resume calls `bind(state)`, `apply(model)` then `load_state_dict(...)` before
    restoring the optimizer), or on its own: `LayerFreezer(train_last=2).apply(model)`.

    Args:
        train_last: train the top N blocks (see `freeze` for the other selectors).
        freeze_first: freeze the first N blocks.
        train_fraction: train the top `ceil(fraction * n_blocks)` blocks.
        include: name patterns of parameters to train as well.
        exclude: name patterns of parameters never to train.
        freeze_embeddings: freeze the embeddings (default True).
        freeze_head: freeze the head too (default False).
        unfreeze_every: gradual unfreezing: unfreeze the next frozen block (top-down) every K units.
        unfreeze_unit: "steps" (optimizer steps) or "epochs".
        lr_decay: layer-wise learning-rate decay (0 < decay <= 1): head and top block 1.0, block `i` from
            the top `decay**i`, embeddings `decay**n_blocks`. None: no decay (`lr_scale` is None).
        no_grad_prefix: run the frozen bottom blocks without autograd (default True; turn off if you
            need gradients with respect to the inputs, as in adversarial training on embeddings).
        cache_prefix: run the frozen prefix (embeddings + frozen bottom blocks) in eval mode, store its
            output per training example in the first epoch and skip the prefix in later epochs (see
            `finetune_lib.freezing.cache`). Needs frozen embeddings and a frozen bottom block; not for
            encoder-decoder models. Opt-in because dropout is off in the prefix, which changes training
            slightly. Costs stored tokens x hidden size x 4 bytes (float32). A block unfrozen by gradual
            unfreezing empties the cache, which refills from the next batches.
        cache_device: where the cached states live (default "cpu").
        blocks: module path(s) of the block list(s), when discovery needs help.

    Example:
        >>> freezer = LayerFreezer(train_last=1, unfreeze_every=100, lr_decay=0.8)
        >>> print(freezer.apply(model))
    """

    def __init__(
        self,
        train_last: int | None = None,
        freeze_first: int | None = None,
        train_fraction: float | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        freeze_embeddings: bool = True,
        freeze_head: bool = False,
        unfreeze_every: int | None = None,
        unfreeze_unit: str = "steps",
        lr_decay: float | None = None,
        no_grad_prefix: bool = True,
        blocks: str | Sequence[str] | None = None,
        cache_prefix: bool = False,
        cache_device: str = "cpu",
    ):
        _validate(train_last, freeze_first, train_fraction)
        compile_patterns(include)
        compile_patterns(exclude)
        if unfreeze_every is not None and (isinstance(unfreeze_every, bool) or not isinstance(unfreeze_every, int)
                                           or unfreeze_every < 1):
            raise ValueError(f"unfreeze_every must be a positive integer (steps or epochs), got {unfreeze_every!r}.")
        if unfreeze_unit not in UNFREEZE_UNITS:
            raise ValueError(f"unfreeze_unit must be one of {', '.join(UNFREEZE_UNITS)}, got {unfreeze_unit!r}.")
        if lr_decay is not None and not (0.0 < float(lr_decay) <= 1.0):
            raise ValueError(f"lr_decay must be in (0, 1] (e.g. 0.8), got {lr_decay!r}.")
        if not isinstance(cache_prefix, bool):
            raise ValueError(f"cache_prefix must be True or False, got {cache_prefix!r}.")
        if cache_prefix and not no_grad_prefix:
            raise ValueError("cache_prefix=True skips the embeddings, so no gradient reaches the inputs; it cannot "
                             "be combined with no_grad_prefix=False. Drop one of the two.")
        self.train_last, self.freeze_first, self.train_fraction = train_last, freeze_first, train_fraction
        self.include, self.exclude = include, exclude
        self.freeze_embeddings, self.freeze_head = freeze_embeddings, freeze_head
        self.unfreeze_every, self.unfreeze_unit = unfreeze_every, unfreeze_unit
        self.lr_decay = None if lr_decay is None else float(lr_decay)
        self.no_grad_prefix = no_grad_prefix
        self.blocks = blocks
        self.model: nn.Module | None = None
        self.parts: ModelParts | None = None
        self._tuner: Any = None
        self._excluded: set[str] = set()
        self._queue: list[int] = []  # blocks still to unfreeze, top-down
        self._unfrozen: list[int] = []  # blocks unfrozen so far by gradual unfreezing, in order
        self._scales: dict[str, float] = {}
        self._prefix = NoGradPrefix()
        self.cache_prefix, self.cache_device = cache_prefix, cache_device
        self.prefix_cache = PrefixCache(cache_device) if cache_prefix else None

    def __repr__(self) -> str:
        """The settings, stable across runs (it is part of a run's resume fingerprint)."""
        names = ("train_last", "freeze_first", "train_fraction", "include", "exclude", "freeze_embeddings",
                 "freeze_head", "unfreeze_every", "unfreeze_unit", "lr_decay", "no_grad_prefix", "blocks",
                 "cache_prefix", "cache_device")
        defaults = {"freeze_embeddings": True, "freeze_head": False, "unfreeze_unit": "steps", "no_grad_prefix": True,
                    "cache_prefix": False, "cache_device": "cpu"}
        shown = [f"{n}={getattr(self, n)!r}" for n in names
                 if getattr(self, n) is not None and getattr(self, n) != defaults.get(n, None)]
        return f"LayerFreezer({', '.join(shown)})"

    # -- applying -----------------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> FreezeSummary:
        """Freeze `model` in place, prepare gradual unfreezing and layer-wise decay; return the summary.
        Calling it again (e.g. on resume) starts over from the configuration."""
        self._prefix.remove()
        parts = find_parts(model, block_paths(model, self.blocks))
        train, self._excluded = trainable_selection(
            model, parts, train_last=self.train_last, freeze_first=self.freeze_first,
            train_fraction=self.train_fraction, include=self.include, exclude=self.exclude,
            freeze_embeddings=self.freeze_embeddings, freeze_head=self.freeze_head)
        adapter = adapter_parameters(model)
        if adapter is not None:  # an adapter trains in place of the base weights (put in the selected blocks)
            self.check_adapter()
            train = adapter - self._excluded
        for name, param in model.named_parameters():
            param.requires_grad_(name in train)
        self.model, self.parts = model, parts
        self._unfrozen = []
        self._queue = []
        if self.unfreeze_every is not None:
            self._queue = [b.index for b in reversed(parts.blocks) if self._frozen_names(b.index)]
        self._scales = layerwise_lr_scales(parts, self.lr_decay) if self.lr_decay is not None else {}
        self._update_prefix()
        if self.prefix_cache is not None:
            self.prefix_cache.install(model, parts)
        return self.summary()

    def trained_block_count(self, n_blocks: int) -> int:
        """How many top blocks of a model with `n_blocks` blocks train (or, with an adapter, get adapters)."""
        return _trained_block_count(n_blocks, self.train_last, self.freeze_first, self.train_fraction,
                                    bool(compile_patterns(self.include)))

    def check_adapter(self) -> None:
        """Refuse the settings that would train base weights next to an adapter (which trains instead).

        Raises:
            ValueError: with gradual unfreezing, `include` or `freeze_embeddings=False`, naming the fix.
        """
        if self.unfreeze_every is not None:
            raise ValueError("Gradual unfreezing (unfreeze_every) is not supported with an adapter: with LoRA, "
                             "train_last=N means adapters in the last N blocks, fixed for the run. Drop "
                             "unfreeze_every, or drop the adapter to unfreeze whole blocks gradually.")
        if self.include is not None or not self.freeze_embeddings:
            what = "include=" if self.include is not None else "freeze_embeddings=False"
            raise ValueError(f"LayerFreezer({what}...) would train base weights next to the adapter, and the saved "
                             "adapter would not hold them. Name those modules in LoRA(modules_to_save=[...]) instead "
                             "(they are then trained in full and saved with the adapter).")

    def summary(self) -> FreezeSummary:
        """The current table of trainable and frozen parameters (after `apply`)."""
        model, parts = self._require_applied()
        return build_summary(model, parts, self.lr_scale)

    @property
    def lr_scale(self) -> Callable[[str], float] | None:
        """`name -> learning-rate multiplier` for `parameter_groups`, or None without `lr_decay`."""
        if self.lr_decay is None:
            return None
        self._require_applied()
        return self._scale_of

    def _scale_of(self, name: str) -> float:
        return self._scales.get(name, 1.0)

    def bind(self, tuner: Any) -> LayerFreezer:
        """Remember the object whose `add_trainable_parameters(names)` receives unfrozen parameters when
        `load_state_dict` replays gradual unfreezing on resume (`FineTuner` binds the run's `TrainState`).
        Returns self."""
        self._tuner = tuner
        return self

    def remove_hooks(self) -> None:
        """Remove the no-autograd hooks of the frozen prefix and the prefix cache (reinstalled by `apply`)."""
        self._prefix.remove()
        if self.prefix_cache is not None:
            self.prefix_cache.remove()

    @property
    def no_grad_blocks(self) -> int:
        """How many bottom blocks currently run without autograd."""
        return self._prefix.refresh()

    # -- gradual unfreezing -------------------------------------------------------------------------
    @property
    def pending_blocks(self) -> list[int]:
        """Indices of the blocks gradual unfreezing will still unfreeze, next first."""
        return list(self._queue)

    @property
    def unfrozen_blocks(self) -> list[int]:
        """Indices of the blocks unfrozen so far by gradual unfreezing, in order."""
        return list(self._unfrozen)

    def unfreeze_next(self, tuner: Any = None) -> list[str]:
        """Unfreeze the next block (top-down) now; return the names of the parameters made trainable.
        If `tuner` (or the bound object; a `TrainState` during `fit`) is given, its
        `add_trainable_parameters(names)` is called."""
        self._require_applied()
        if not self._queue:
            return []
        index = self._queue.pop(0)
        names = self._frozen_names(index)
        for name in names:
            self._params()[name].requires_grad_(True)
        self._unfrozen.append(index)
        self._update_prefix()
        if self.prefix_cache is not None:  # a shorter prefix: the cached states are stale
            self.prefix_cache.install(self.model, self.parts, strict=False)
        tuner = tuner if tuner is not None else self._tuner
        if tuner is not None and names:
            adder = getattr(tuner, "add_trainable_parameters", None)
            if adder is None:
                raise AttributeError(
                    f"{type(tuner).__name__} has no add_trainable_parameters(names); gradual unfreezing needs "
                    "it to add the unfrozen parameters to the optimizer.")
            adder(list(names))
        logger.info("LayerFreezer: unfroze block %d (%s), %d tensors", index, self.parts.blocks[index].name,
                    len(names))
        return names

    def _due(self, count: int) -> int:
        return min(len(self._queue) + len(self._unfrozen), count // self.unfreeze_every)

    def _catch_up(self, state: TrainState, count: int) -> None:
        if self.unfreeze_every is None or self.parts is None:
            return
        while self._queue and len(self._unfrozen) < self._due(count):
            self.unfreeze_next(state)

    def on_optimizer_step(self, state: TrainState) -> None:
        if self.unfreeze_unit == "steps":
            self._catch_up(state, state.step)

    def on_batch_end(self, state: TrainState) -> None:
        if self.unfreeze_unit == "steps":
            self._catch_up(state, state.step)

    def on_fit_end(self, state: TrainState) -> None:
        self._prefix.remove()  # training is over: leave the model as it was (apply() installs them again)
        if self.prefix_cache is not None:
            self.prefix_cache.remove()  # and free the cached states

    # the prefix cache stores or replays only the training forward of the current micro-batch
    def on_fit_start(self, state: TrainState) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()  # new data: example ids mean other examples

    def on_batch_start(self, state: TrainState) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.arm(state)

    def on_before_optimizer_step(self, state: TrainState) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.disarm()

    def on_eval_start(self, state: TrainState) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.disarm()

    def on_epoch_start(self, state: TrainState) -> None:
        if self.unfreeze_unit == "epochs":
            self._catch_up(state, state.epoch)

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the blocks unfrozen so far, in order (and their module paths, as a check)."""
        names = [self.parts.blocks[i].name for i in self._unfrozen] if self.parts is not None else []
        return {"unfrozen_blocks": list(self._unfrozen), "unfrozen_block_names": names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay gradual unfreezing: unfreeze the same blocks in the same order and hand each block's
        parameters to the bound tuner's `add_trainable_parameters`, as during the run, so the optimizer's
        parameter groups match the checkpoint. Call `bind(state)` and `apply(model)` first."""
        self._require_applied()
        wanted = [int(i) for i in state.get("unfrozen_blocks", [])]
        if wanted[: len(self._unfrozen)] != self._unfrozen:
            raise ValueError(f"Checkpoint unfroze blocks {wanted} but this freezer already unfroze "
                             f"{self._unfrozen}; call apply(model) before load_state_dict.")
        expected = self._unfrozen + self._queue[: len(wanted) - len(self._unfrozen)]
        names = state.get("unfrozen_block_names")
        if wanted != expected or (names is not None and names != [self.parts.blocks[i].name for i in wanted]):
            raise ValueError(f"Checkpoint unfroze blocks {wanted} ({names}), but this freezer and model would "
                             f"unfreeze {expected}: the LayerFreezer settings or the model differ from the run.")
        todo = len(wanted) - len(self._unfrozen)
        if todo and self._tuner is None:
            raise RuntimeError("LayerFreezer.load_state_dict must re-add unfrozen parameters to the optimizer: "
                               "call freezer.bind(state) first (an object with add_trainable_parameters(names), such as the "
                               "run's TrainState).")
        for _ in range(todo):
            self.unfreeze_next(self._tuner)

    # -- internals ----------------------------------------------------------------------------------
    def _require_applied(self) -> tuple[nn.Module, ModelParts]:
        if self.model is None or self.parts is None:
            raise RuntimeError("Call LayerFreezer.apply(model) first.")
        return self.model, self.parts

    def _params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def _frozen_names(self, index: int) -> list[str]:
        params = self._params()
        return [n for n in self.parts.blocks[index].params if not params[n].requires_grad and n not in self._excluded]

    def _update_prefix(self) -> None:
        self._prefix.remove()
        if not self.no_grad_prefix:
            return
        params = self._params()
        if any(params[n].requires_grad for n in self.parts.embeddings):
            return
        blocks, block_params = [], []
        for blk in self.parts.blocks:
            if any(params[n].requires_grad for n in blk.params):
                break
            blocks.append(blk.module)
            block_params.append([params[n] for n in blk.params])
        self._prefix.install(blocks, block_params, [params[n] for n in self.parts.embeddings])
