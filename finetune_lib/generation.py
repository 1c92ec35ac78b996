"""What generation stops at, and sampling that repeats without touching the user's random state.

`stop_token_ids` lists the tokens generation ends at: the tokenizer's EOS, the EOS ids of the
model's `generation_config`, and the end-of-turn tokens of chat models (``<|im_end|>``,
``<|eot_id|>``, ...) that the tokenizer has as special tokens or its chat template writes.
`seeded_sampling` runs sampling from a fixed seed and puts torch's random state back afterwards,
so the same seed gives the same texts and the user's own random numbers are not disturbed.
`generate_texts` (in `finetune_lib.tasks`) uses both.

Example:
    >>> tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})        # doctest: +SKIP
    >>> stop_token_ids(tok)                                                         # doctest: +SKIP
    [3, 400]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["END_OF_TURN_TOKENS", "check_generation_settings", "cut_at_stop", "seeded_sampling", "stop_token_ids"]

#: end-of-turn (or end-of-message) tokens of common chat templates: ChatML (SmolLM2, Qwen), Llama 3,
#: Phi-3, Gemma, Command-R, and plain end-of-text tokens
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
                      "<|END_OF_TURN_TOKEN|>", "<|endoftext|>", "<|end_of_text|>", "</s>")


def _template_text(template: Any) -> str:
    """A chat template as one text (tokenizers may hold several named templates in a dict)."""
    if isinstance(template, str):
        return template
    if isinstance(template, dict):
        return "\n".join(str(v) for v in template.values())
    if isinstance(template, (list, tuple)):  # [{"name": ..., "template": ...}, ...]
        return "\n".join(str(t.get("template", "")) if isinstance(t, dict) else str(t) for t in template)
    return ""


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value if v is not None]


def stop_token_ids(tokenizer: Any, model: Any = None, chat_template: str | None = None) -> list[int]:
    """The ids generation stops at, EOS first, without repeats.

    An end-of-turn token of `END_OF_TURN_TOKENS` counts when it is one token of the vocabulary and
    either a special token of the tokenizer (added tokens included) or written by the chat template
    (the tokenizer's, or `chat_template` when given, e.g. a `Preprocessor`'s own). The EOS ids of
    `model.generation_config` (a Llama-3 model lists ``<|eot_id|>`` there) are added too.

    Args:
        tokenizer: the tokenizer.
        model: the model (optional), for its `generation_config.eos_token_id`.
        chat_template: a chat template used instead of (or besides) the tokenizer's.
    """
    ids = _as_ids(getattr(tokenizer, "eos_token_id", None))
    config = getattr(model, "generation_config", None)
    ids += _as_ids(getattr(config, "eos_token_id", None))
    template = _template_text(getattr(tokenizer, "chat_template", None)) + "\n" + _template_text(chat_template)
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    try:
        special |= set(tokenizer.get_added_vocab())
    except (AttributeError, NotImplementedError):
        pass
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in END_OF_TURN_TOKENS:
        if token not in special and token not in template:
            continue
        try:
            found = tokenizer.convert_tokens_to_ids(token)
        except (KeyError, ValueError, TypeError):
            continue
        if isinstance(found, int) and found != unk and found >= 0:
            ids.append(found)
    return list(dict.fromkeys(ids))


def cut_at_stop(rows: torch.Tensor, stop_ids: Sequence[int], start: int = 0) -> list[list[int]]:
    """Each row of generated ids up to (not including) its first stop token at or after `start`."""
    out = []
    stops = set(stop_ids)
    for row in rows.tolist():
        end = next((j for j in range(start, len(row)) if row[j] in stops), len(row))
        out.append(row[:end])
    return out


def check_generation_settings(**settings: Any) -> None:
    """Refuse generation settings (`max_new_tokens`, `temperature`, `top_p`, `do_sample`, `seed`) that are
    not finite, of the wrong kind or out of range, with the fix: the rules of `TrainingArgs`
    (`finetune_lib.training.setting_checks.RULES`). Settings given as None are skipped."""
    from types import SimpleNamespace

    from .training.setting_checks import check_numbers

    check_numbers(SimpleNamespace(**{k: v for k, v in settings.items() if v is not None}))


@contextlib.contextmanager
def seeded_sampling(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the body from torch's random state seeded with `seed`, then restore the state it had.

    The CPU generator is always forked; on CUDA (or another accelerator) the generator of `device`
    too. Nothing else (Python's `random`, NumPy) is read by sampling, so nothing else is touched.
    """
    device = torch.device(device)
    accelerated = device.type not in ("cpu", "meta")
    index = device.index
    if accelerated and index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    devices = [index] if accelerated else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accelerated else "cuda"):
        torch.random.default_generator.manual_seed(int(seed))
        if device.type == "cuda" and index is not None:
            torch.cuda.default_generators[index].manual_seed(int(seed))
        elif accelerated:
            module = getattr(torch, device.type, None)
            if module is not None and hasattr(module, "manual_seed"):
                module.manual_seed(int(seed))
        yield
