"""Cache the output of the frozen prefix (embeddings + frozen bottom blocks) and skip it in later epochs.

With `LayerFreezer(train_last=2, cache_prefix=True)` the frozen prefix is a fixed function of each
training example, provided its dropout is off. So the first epoch runs normally and stores, per training
example, the hidden states that leave the last frozen block; every later batch whose examples are all
stored skips the embeddings and the frozen blocks: the last frozen block hands back the stored states
(padded to this batch's shape, as batches are reshuffled every epoch), the blocks below it return their
input untouched, and the embedding modules return zeros of the right shape without computing anything.
"Retrain the last two layers" then costs about the top blocks' share of a full pass.

How (`PrefixCache`, driven by `LayerFreezer`'s events):

* **Dropout off in the prefix, always**: a forward pre-hook puts each prefix module (embedding modules,
  parameter-free modules before the first block such as GPT-2's embedding dropout, and the frozen
  blocks) in eval mode before it runs. The cached and the uncached runs therefore compute the same
  thing, but it is *not* the same training as a dropout-on prefix (the top blocks no longer see
  dropout noise from below), which is why caching is opt-in.
* **Only the training forward of the current micro-batch** stores or replays: `on_batch_start` arms
  the cache with that batch; a pre-hook on the model recognizes the forward call on exactly that
  batch's `input_ids` tensor while the model is in training mode, and only that call stores (epoch 1)
  or replays (later). Evaluation, generation and any other forward run normally.
* **Per example, unpadded**: an example's states are the positions where its attention mask is 1,
  stored by `state.example_ids` on `device` ("cpu" by default) in the dtype the block produced
  (float32 without mixed precision). Replays need right-padded batches (what `Preprocessor.collate`
  makes); a left-padded batch runs normally, because its positions shift with the padding.
* **Block outputs** of transformers 5.x are tensors for BERT, GPT-2 and Llama; a tuple whose first item
  is the hidden states and the rest `None` (older releases) is handled too. Anything else runs normally.
* **Invalidation**: when a block of the prefix becomes trainable (gradual unfreezing, or by hand), the
  cache is emptied and the shorter prefix is cached again from the next batches on. Gradual unfreezing
  by epochs therefore rarely reuses anything. The cache is not checkpointed: a resumed run refills it.
* **Packed rows** (a 4-D attention mask) run normally.
* **Encoder-decoder models** (T5, BART) are not supported: `install` raises.

Memory: stored tokens x hidden size x bytes per value (4 in float32), e.g. 800 examples of 40 tokens
with MiniLM (384 wide) take 800 * 40 * 384 * 4 B = 49 MB; a million tokens of a 4096-wide model take
16 GB. `len(cache)` and `cache.nbytes` say what is held; it is freed at the end of `fit`.

Example:
    >>> freezer = LayerFreezer(train_last=2, cache_prefix=True)  # cache_device="cpu"
    >>> FineTuner(model, freezer=freezer, epochs=3).fit(train)    # epochs 2-3 skip the prefix
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .blocks import ModelParts

__all__ = ["PrefixCache", "cacheable_prefix"]

logger = logging.getLogger(__name__)

_OFF, _STORE, _REPLAY = 0, 1, 2


def _module_name(model: nn.Module, module: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def cacheable_prefix(model: nn.Module, parts: ModelParts) -> int:
    """How many bottom blocks can be cached: 0 when the embeddings train, else the number of frozen
    blocks before the first trainable one. Raises for encoder-decoder models."""
    config = getattr(model, "config", None)
    if len(parts.stacks) > 1 or getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"cache_prefix=True does not support encoder-decoder models ({type(model).__name__}: the decoder "
            "blocks also read the encoder output, which a per-example cache of one stack does not capture). "
            "Use cache_prefix=False (the frozen prefix still runs without autograd).")
    params = dict(model.named_parameters())
    if any(params[n].requires_grad for n in parts.embeddings):
        return 0
    k = 0
    for blk in parts.blocks:
        if any(params[n].requires_grad for n in blk.params):
            break
        k += 1
    return k


def _first_int_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    ids = kwargs.get("input_ids")
    if isinstance(ids, torch.Tensor):
        return ids
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
            return value
    return None


@dataclass
class _Armed:
    """The micro-batch the next training forward belongs to."""

    input_ids: torch.Tensor
    mode: int
    example_ids: list[int]
    lengths: list[int]
    mask: torch.Tensor | None  # bool (B, T); None: no padding
    states: torch.Tensor | None = None  # (B, T, H) on the model's device, when replaying


class PrefixCache:
    """Per-example cache of the frozen prefix's output; see the module docstring.

    Args:
        device: where the cached states live ("cpu" by default; the model's device avoids the copies
            at the cost of its memory).
        reuse: False keeps only the eval-mode prefix and stores nothing (the same training as with the
            cache, at full cost: a reference to compare against).

    Attributes:
        stored_batches: training forwards that computed the prefix (and stored it).
        replayed_batches: training forwards that skipped it.
    """

    def __init__(self, device: str | torch.device = "cpu", reuse: bool = True) -> None:
        self.device = torch.device(device)
        self.reuse = reuse
        self.model: nn.Module | None = None
        self.parts: ModelParts | None = None
        self.blocks = 0  # blocks in the cached prefix
        self._store: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._replaced: list[tuple[nn.Module, bool, Any]] = []  # (module, had own forward, that forward)
        self._eval_modules: list[nn.Module] = []
        self._prefix_params: list[torch.Tensor] = []
        self._embed_meta: dict[int, tuple[int, torch.dtype] | None] = {}
        self._format: tuple[str, int] | None = None  # ("tensor", 1) or ("tuple", n)
        self._armed: _Armed | None = None
        self._mode = _OFF
        self._modes: list[int] = []
        self._warned: set[str] = set()
        self.stored_batches = 0
        self.replayed_batches = 0

    # -- public ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._store)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached states."""
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def install(self, model: nn.Module, parts: ModelParts, strict: bool = True) -> int:
        """Hook the frozen prefix of `model`; returns its number of blocks. The cache is emptied when the
        prefix differs from the one installed before.

        Raises:
            ValueError: (with `strict`) an encoder-decoder model, trainable embeddings, or no frozen block
                at the bottom. Without `strict` (a block was unfrozen during training) the cache turns off.
        """
        k = cacheable_prefix(model, parts)
        if k == 0 and strict:
            params = dict(model.named_parameters())
            trainable = [n for n in parts.embeddings if params[n].requires_grad]
            if trainable:
                raise ValueError(
                    f"cache_prefix=True needs frozen embeddings, but {', '.join(trainable[:3])} "
                    f"{'are' if len(trainable) > 1 else 'is'} trainable (freeze_embeddings=False or include=...). "
                    "Freeze the embeddings or use cache_prefix=False.")
            first = parts.blocks[0]
            raise ValueError(
                f"cache_prefix=True needs at least one frozen block at the bottom, but block 0 ({first.name}) "
                f"trains. Train fewer blocks (e.g. train_last={len(parts.blocks) - 1}) or use cache_prefix=False.")
        same = model is self.model and k == self.blocks
        self.remove(keep=same)
        self.model, self.parts, self.blocks = model, parts, k
        if k == 0:
            logger.info("LayerFreezer: the frozen prefix is gone; prefix cache off")
            return 0
        params = dict(model.named_parameters())
        self._prefix_params = [params[n] for n in parts.embeddings]
        self._prefix_params += [params[n] for blk in parts.blocks[:k] for n in blk.params]
        before, skippable = self._modules_before_blocks(model, parts)
        blocks = [blk.module for blk in parts.blocks[:k]]
        self._eval_modules = before + blocks
        for module in self._eval_modules:
            self._handles.append(module.register_forward_pre_hook(_to_eval))
        if not self.reuse:
            return k
        self._handles.append(model.register_forward_pre_hook(self._model_pre, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._model_post, always_call=True))
        self._handles.append(blocks[-1].register_forward_hook(self._store_hook))
        for module in skippable:
            self._handles.append(module.register_forward_hook(self._embed_hook, with_kwargs=True))
            self._replace(module, self._embedding_forward(module))
        for i, block in enumerate(blocks):
            self._replace(block, self._block_forward(block, last=i == k - 1))
        return k

    def remove(self, keep: bool = False) -> None:
        """Remove every hook and replacement (prefix modules follow the model's train/eval mode again);
        empty the cache unless `keep`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, had, forward in self._replaced:
            if had:
                module.forward = forward
            else:
                del module.forward
        self._replaced = []
        if self.model is not None:
            for module in self._eval_modules:
                module.train(self.model.training)
        self._eval_modules, self._prefix_params = [], []
        self._armed, self._mode, self._modes = None, _OFF, []
        if not keep:
            self.clear()

    def clear(self) -> None:
        """Forget every cached example."""
        self._store = {}
        self._embed_meta = {}
        self._format = None

    def arm(self, state: Any) -> None:
        """Prepare the training forward of `state.batch` (call at `batch_start`): replay it when every
        example is cached, else compute and store it."""
        self._armed = None
        if not self.reuse or self.model is None or self.blocks == 0 or state.model is not self.model:
            return
        if any(p.requires_grad for p in self._prefix_params):  # unfrozen by hand: shorter prefix
            self.install(self.model, self.parts, strict=False)
            if self.blocks == 0:
                return
        batch = state.batch or {}
        ids, mask = batch.get("input_ids"), batch.get("attention_mask")
        examples = list(state.example_ids)
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or len(examples) != ids.shape[0]:
            return
        n, width = ids.shape
        if mask is None:
            bool_mask, lengths = None, [width] * n
        elif mask.ndim != 2:
            self._warn("mask", f"cache_prefix: a training batch has a {mask.ndim}-D attention mask (packed rows?); "
                               "such batches run the frozen prefix normally")
            return
        else:
            bool_mask = mask.bool()
            if not bool((bool_mask[:, 1:] <= bool_mask[:, :-1]).all()):
                self._warn("left", "cache_prefix: a training batch is not right-padded; such batches run the "
                                   "frozen prefix normally (positions would shift with the padding)")
                return
            lengths = bool_mask.sum(1).tolist()
            if bool_mask.all():
                bool_mask = None
        cached = [self._store.get(e) for e in examples]
        if self._format is not None and all(c is not None and c.shape[0] == ln for c, ln in zip(cached, lengths)):
            rows = torch.cat(cached).to(ids.device, non_blocking=True)
            if bool_mask is None:
                states = rows.view(n, width, rows.shape[-1])
            else:
                states = rows.new_zeros((n, width, rows.shape[-1]))
                states[bool_mask] = rows
            self._armed = _Armed(ids, _REPLAY, examples, lengths, bool_mask, states)
        else:
            self._armed = _Armed(ids, _STORE, examples, lengths, bool_mask)

    def disarm(self) -> None:
        """Forget the armed batch (its forward is over)."""
        self._armed = None

    # -- internals ------------------------------------------------------------------------------------
    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    @staticmethod
    def _modules_before_blocks(model: nn.Module, parts: ModelParts) -> tuple[list[nn.Module], list[nn.Module]]:
        """Top-most modules of the base model registered before the first block (embeddings, their
        dropout, rotary tables), and those of them whose parameters are all embeddings (skippable)."""
        first = parts.blocks[0].name
        base = getattr(model, "base_model", model)
        base_name = "" if base is model else (_module_name(model, base) or "")
        embeddings = set(parts.embeddings)
        chosen: list[str] = []
        before: list[nn.Module] = []
        skippable: list[nn.Module] = []
        for name, module in model.named_modules():
            if name == first:
                break
            if name == "" or first.startswith(name + "."):  # an ancestor of the blocks
                continue
            if base_name and not name.startswith(base_name + "."):
                continue
            if any(name.startswith(c + ".") for c in chosen):
                continue
            chosen.append(name)
            before.append(module)
            own = [f"{name}.{n}" for n, _ in module.named_parameters(remove_duplicate=False)]
            if own and all(n in embeddings for n in own):
                skippable.append(module)
        return before, skippable

    def _replace(self, module: nn.Module, forward: Any) -> None:
        had = "forward" in module.__dict__
        self._replaced.append((module, had, module.__dict__.get("forward")))
        module.forward = forward

    def _model_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mode = _OFF
        armed = self._armed
        if armed is not None and module.training:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if _same_tensor(ids, armed.input_ids):  # also when a wrapper (DDP) re-creates the tensor object
                mode = armed.mode
        self._modes.append(self._mode)
        self._mode = mode
        if mode == _STORE:
            self.stored_batches += 1
        elif mode == _REPLAY:
            self.replayed_batches += 1

    def _model_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._mode = self._modes.pop() if self._modes else _OFF

    def _embed_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Learn the output width and dtype of an embedding module from a real forward."""
        if self._mode != _STORE or id(module) in self._embed_meta:
            return
        ids = _first_int_tensor(args, kwargs)
        ok = (isinstance(output, torch.Tensor) and ids is not None and output.ndim == ids.ndim + 1
              and tuple(output.shape[:-1]) == tuple(ids.shape))
        self._embed_meta[id(module)] = (output.shape[-1], output.dtype) if ok else None

    def _embedding_forward(self, module: nn.Module) -> Any:
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            meta = self._embed_meta.get(id(module))
            ids = _first_int_tensor(args, kwargs) if self._mode == _REPLAY and meta is not None else None
            if ids is None:
                return original(*args, **kwargs)
            return torch.zeros((*ids.shape, meta[0]), dtype=meta[1], device=ids.device)

        return forward

    def _block_forward(self, block: nn.Module, last: bool) -> Any:
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._mode != _REPLAY:
                return original(*args, **kwargs)
            hidden = self._armed.states if last else (args[0] if args else kwargs["hidden_states"])
            kind, n = self._format
            return hidden if kind == "tensor" else (hidden, *([None] * (n - 1)))

        return forward

    def _store_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._mode != _STORE:
            return
        if isinstance(output, torch.Tensor):
            hidden, fmt = output, ("tensor", 1)
        elif (isinstance(output, tuple) and not hasattr(output, "_fields") and output
              and isinstance(output[0], torch.Tensor) and all(x is None for x in output[1:])):
            hidden, fmt = output[0], ("tuple", len(output))
        else:
            self._warn("format", f"cache_prefix: the blocks return {type(output).__name__}, not the hidden "
                                 "states (a tensor); the frozen prefix runs normally")
            return
        armed = self._armed
        if hidden.ndim != 3 or tuple(hidden.shape[:2]) != tuple(armed.input_ids.shape):
            self._warn("shape", f"cache_prefix: the last frozen block returned shape {tuple(hidden.shape)} for "
                                f"a batch of {tuple(armed.input_ids.shape)}; the frozen prefix runs normally")
            return
        self._format = fmt
        hidden = hidden.detach()
        flat = hidden.reshape(-1, hidden.shape[-1]) if armed.mask is None else hidden[armed.mask]
        flat = flat.to(self.device, copy=True)
        for example, states in zip(armed.example_ids, flat.split(armed.lengths)):
            self._store[example] = states


def _same_tensor(a: Any, b: torch.Tensor) -> bool:
    return a is b or (isinstance(a, torch.Tensor) and a.shape == b.shape and a.device == b.device
                      and a.data_ptr() == b.data_ptr())


def _to_eval(module: nn.Module, args: tuple) -> None:
    if module.training:
        module.train(False)
