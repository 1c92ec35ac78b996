"""Find the embeddings, the stack of transformer blocks and the head of a model, by structure.

No per-model table: the rules below work for BERT / RoBERTa / DistilBERT / MiniLM, GPT-2, Llama /
Mistral / Qwen, OPT, T5 and BART-style encoder-decoders, and for custom `nn.Module`s built the same way.

Rules (what `find_parts` decides, in order):

* **Blocks** are the children of the longest `nn.ModuleList` whose items are all of one class and hold
  parameters (lists nested inside such a list, like T5's per-block `layer` list or MoE experts, are
  ignored). An encoder-decoder (`config.is_encoder_decoder`, or a model with `get_encoder()` and
  `get_decoder()`) has two stacks; its blocks are numbered **encoder blocks first, then decoder
  blocks**, so "the top blocks" of T5 are the top decoder blocks. Pass `blocks="path.to.list"` (or a
  list of paths) to name the stacks yourself.
* **Head**: every parameter outside `model.base_model` (`classifier`, `lm_head`, `score`,
  `cls.predictions`, `classification_head`, ...) plus non-normalization parameters of the base model
  that come after the last block (BERT's `pooler`).
* **Final norms** (a normalization layer after a stack, such as GPT-2's `ln_f`, Llama's `model.norm`,
  T5's `encoder.final_layer_norm`, OPT's `final_layer_norm`) belong to the top block of that stack: they
  are trained, frozen and learning-rate scaled with it.
* **Embeddings**: every `nn.Embedding` outside the blocks and the head, normalization layers whose
  name says "embed", and any other parameter registered before the first block (position
  embeddings, BERT's `embeddings.LayerNorm`, projections).
* **Tied weights** (GPT-2's and T5's `lm_head` share the input embedding matrix) are one tensor with
  several names; it is listed once, under the name `named_parameters()` gives first, which is the
  embedding. Freezing the embeddings therefore freezes the tied head too: the head follows the
  embeddings unless the model is untied (`config.tie_word_embeddings=False`).

When no stack is found, `BlockDiscoveryError` shows the module tree.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from ..modeling import is_norm_module

__all__ = ["Block", "ModelParts", "BlockDiscoveryError", "find_parts", "module_tree", "compile_patterns"]


class BlockDiscoveryError(ValueError):
    """The transformer blocks of a model could not be found; the message shows its module tree."""


@dataclass
class Block:
    """One transformer block.

    Attributes:
        index: position in the block order (0 = closest to the input; encoder blocks before decoder blocks).
        name: module path, e.g. `"bert.encoder.layer.3"`.
        module: the block itself.
        params: names of the parameters that belong to the block, attached final norms included.
        attached: names of parameters outside the block module that belong to it (final norms).
    """

    index: int
    name: str
    module: nn.Module
    params: list[str] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)


@dataclass
class ModelParts:
    """The parts of a model, each parameter in exactly one of them.

    Attributes:
        embeddings: parameter names of the embeddings.
        blocks: the blocks, bottom to top.
        head: parameter names of the task head.
        stacks: module paths of the `ModuleList`s holding the blocks.
        aliases: canonical parameter name -> other names of the same tensor (tied weights).
        part_of: parameter name (aliases included) -> "embeddings", "block <i>" or "head".
    """

    embeddings: list[str]
    blocks: list[Block]
    head: list[str]
    stacks: list[str]
    aliases: dict[str, list[str]]
    part_of: dict[str, str]

    def names(self, part: str) -> list[str]:
        """Parameter names of one part ("embeddings", "head" or "block <i>")."""
        if part == "embeddings":
            return list(self.embeddings)
        if part == "head":
            return list(self.head)
        if part.startswith("block "):
            return list(self.blocks[int(part.split()[1])].params)
        raise KeyError(f"Unknown part {part!r}; use 'embeddings', 'head' or 'block <i>'.")

    def all_names(self, name: str) -> list[str]:
        """`name` and the other names of the same tensor."""
        return [name, *self.aliases.get(name, [])]


def _leaf_class(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def _stack_candidates(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Homogeneous ModuleLists of blocks with parameters, outermost only."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or _leaf_class(module[0]):
            continue
        if not any(True for _ in module.parameters()):
            continue
        found.append((name, module))
    outer = []
    for name, module in found:
        nested = any(other != name and (other == "" or name.startswith(other + ".")) for other, _ in found)
        if not nested:
            outer.append((name, module))
    return outer


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _best(cands: list[tuple[str, nn.ModuleList]]) -> tuple[str, nn.ModuleList] | None:
    if not cands:
        return None
    return max(cands, key=lambda c: (len(c[1]), _numel(c[1])))


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules(remove_duplicate=False)}


def _encoder_decoder(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    config = getattr(model, "config", None)
    get_enc, get_dec = getattr(model, "get_encoder", None), getattr(model, "get_decoder", None)
    if not (callable(get_enc) and callable(get_dec)):
        return None
    if config is not None and not getattr(config, "is_encoder_decoder", False):
        return None
    try:
        enc, dec = get_enc(), get_dec()
    except Exception:  # noqa: BLE001 - some models raise for the missing half
        return None
    if isinstance(enc, nn.Module) and isinstance(dec, nn.Module) and enc is not dec and enc is not model:
        return enc, dec
    return None


def _find_stacks(model: nn.Module, blocks: str | Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    if blocks is not None:
        paths = [blocks] if isinstance(blocks, str) else list(blocks)
        stacks = []
        for path in paths:
            try:
                module = model.get_submodule(path)
            except AttributeError as err:
                raise BlockDiscoveryError(
                    f"blocks={path!r} is not a module of {type(model).__name__}.\n{module_tree(model)}"
                ) from err
            if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
                raise BlockDiscoveryError(
                    f"blocks={path!r} is a {type(module).__name__}, not a non-empty nn.ModuleList of blocks."
                )
            stacks.append((path, module))
        return stacks

    cands = _stack_candidates(model)
    pair = _encoder_decoder(model)
    if pair is not None:
        names = _module_names(model)
        chosen = []
        for half in pair:
            scope = names.get(id(half))
            if scope is None:
                continue
            inside = [c for c in cands if scope == "" or c[0].startswith(scope + ".")]
            best = _best(inside)
            if best is not None and best not in chosen:
                chosen.append(best)
        if len(chosen) == 2:
            return chosen
    best = _best(cands)
    if best is None:
        raise BlockDiscoveryError(
            f"Could not find the transformer blocks of {type(model).__name__}: it has no torch.nn.ModuleList "
            "of identical blocks with parameters. Module tree:\n"
            f"{module_tree(model)}\n"
            "Name the block list yourself, e.g. LayerFreezer(train_last=2, blocks='encoder.layers'), "
            "or freeze by parameter name with include=[...] / exclude=[...] on a model that has blocks."
        )
    return [best]


def _is_final_norm(leaf: str) -> bool:
    leaf = leaf.lower()
    return "final" in leaf or leaf in ("ln_f", "norm_f")


def find_parts(model: nn.Module, blocks: str | Iterable[str] | None = None) -> ModelParts:
    """Split the parameters of `model` into embeddings, blocks and head (see the module docstring).

    Args:
        model: any `nn.Module`; Hugging Face models are recognized by structure.
        blocks: module path(s) of the `ModuleList`(s) of blocks, to override the discovery.

    Raises:
        BlockDiscoveryError: no stack of blocks was found; the message shows the module tree.

    Example:
        >>> parts = find_parts(model)
        >>> [b.name for b in parts.blocks][-2:]
        ['bert.encoder.layer.4', 'bert.encoder.layer.5']
    """
    stacks = _find_stacks(model, blocks)

    # Canonical names (first name of each tensor) and aliases of tied weights.
    first: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases.setdefault(first[id(param)], []).append(name)
        else:
            first[id(param)] = name
    order = list(first.values())
    position = {name: i for i, name in enumerate(order)}
    modules = dict(model.named_modules())

    # Blocks, numbered through the stacks in order.
    block_list: list[Block] = []
    stack_blocks: list[list[Block]] = []
    prefix_to_block: dict[str, Block] = {}
    for stack_name, stack in stacks:
        mine = []
        for j, child in enumerate(stack):
            path = f"{stack_name}.{j}" if stack_name else str(j)
            blk = Block(index=len(block_list), name=path, module=child)
            block_list.append(blk)
            mine.append(blk)
            prefix_to_block[path + "."] = blk
        stack_blocks.append(mine)

    def block_of(name: str) -> Block | None:
        for prefix, blk in prefix_to_block.items():
            if name.startswith(prefix):
                return blk
        return None

    for name in order:
        blk = block_of(name)
        if blk is not None:
            blk.params.append(name)
    for blk in block_list:
        if not blk.params:
            raise BlockDiscoveryError(f"Block {blk.name} has no parameters of its own (shared weights?).")
    first_idx = [min(position[n] for b in sb for n in b.params) for sb in stack_blocks]

    base = getattr(model, "base_model", model)
    base_name = None if base is model else _module_names(model).get(id(base))

    def inside_base(name: str) -> bool:
        return base_name is None or base_name == "" or name.startswith(base_name + ".")

    def stack_for_final(module_path: str) -> int:
        best, best_len = len(stacks) - 1, -1
        for s, (stack_name, _) in enumerate(stacks):
            scope = stack_name.rsplit(".", 1)[0] if "." in stack_name else ""
            if (scope == "" or module_path.startswith(scope + ".")) and len(scope) > best_len:
                best, best_len = s, len(scope)
        return best

    def preceding_stack(i: int) -> int:
        s = 0
        for k, start in enumerate(first_idx):
            if start < i:
                s = k
        return s

    embeddings: list[str] = []
    head: list[str] = []
    for name in order:
        if block_of(name) is not None:
            continue
        i = position[name]
        module_path = name.rsplit(".", 1)[0] if "." in name else ""
        module = modules.get(module_path, model)
        leaf = module_path.rsplit(".", 1)[-1]
        if not inside_base(name):
            head.append(name)
        elif isinstance(module, nn.Embedding) or (is_norm_module(module) and "embed" in module_path.lower()):
            embeddings.append(name)
        elif is_norm_module(module):
            if _is_final_norm(leaf):
                top = stack_blocks[stack_for_final(module_path)][-1]
            elif i < first_idx[0]:
                embeddings.append(name)
                continue
            else:
                top = stack_blocks[preceding_stack(i)][-1]
            top.params.append(name)
            top.attached.append(name)
        elif i < first_idx[-1]:
            embeddings.append(name)
        else:
            head.append(name)

    part_of: dict[str, str] = {}
    for name in embeddings:
        for alias in [name, *aliases.get(name, [])]:
            part_of[alias] = "embeddings"
    for blk in block_list:
        for name in blk.params:
            for alias in [name, *aliases.get(name, [])]:
                part_of[alias] = f"block {blk.index}"
    for name in head:
        for alias in [name, *aliases.get(name, [])]:
            part_of[alias] = "head"
    return ModelParts(embeddings=embeddings, blocks=block_list, head=head,
                      stacks=[s for s, _ in stacks], aliases=aliases, part_of=part_of)


def module_tree(model: nn.Module, max_depth: int = 4, max_lines: int = 80) -> str:
    """A compact, indented tree of module names and classes (identical list items collapsed)."""
    lines: list[str] = []

    def walk(module: nn.Module, name: str, depth: int) -> None:
        if len(lines) >= max_lines:
            return
        n_params = sum(p.numel() for p in module.parameters())
        label = f"{'  ' * depth}{name or '(model)'}: {type(module).__name__} ({n_params:,} params)"
        children = list(module.named_children())
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and children:
            kinds = {type(c) for _, c in children}
            if len(kinds) == 1 and len(children) > 1:
                lines.append(f"{label} of {len(children)} x {type(children[0][1]).__name__}")
                walk(children[0][1], children[0][0], depth + 1)
                return
        lines.append(label)
        if depth + 1 > max_depth:
            return
        for child_name, child in children:
            walk(child, child_name, depth + 1)

    walk(model, "", 0)
    if len(lines) >= max_lines:
        lines.append("  ... (truncated)")
    return "\n".join(lines)


def compile_patterns(patterns: Iterable[str] | str | None) -> list[tuple[str, Callable[[str], bool]]]:
    """Turn name patterns into matchers. A name matches a pattern when the pattern, read as a glob
    (`fnmatch`), matches the whole name, or, read as a regular expression, is found in it (`re.search`).
    A pattern that is not a valid regular expression (`*.bias`) is used as a glob only."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"Name patterns must be non-empty strings, got {pattern!r}.")
        try:
            rx: re.Pattern[str] | None = re.compile(pattern)
        except re.error:
            rx = None

        def match(name: str, pattern: str = pattern, rx: re.Pattern[str] | None = rx) -> bool:
            return fnmatch.fnmatchcase(name, pattern) or (rx is not None and rx.search(name) is not None)

        out.append((pattern, match))
    return out

