"""Conversations: check `{"messages": [...]}` records, render them with a chat template, mask the loss.

A conversation record holds ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``:
an optional system prompt, then user and assistant turns. `Preprocessor` renders it with the chat
template (the user's `Preprocessor(chat_template=...)`, else the tokenizer's) and learns the
assistant turns only, by default.

Which tokens carry the loss. Each assistant turn's span is found by rendering prefixes of the
conversation, which works for any template, with or without `{% generation %}` markers:

    turn i  =  render(messages[:i + 1])  minus  render(messages[:i], add_generation_prompt=True)

so the turn's header (``<|im_start|>assistant\\n``, Llama-3's ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``)
belongs to the prompt, and everything the template writes for the turn after its header is
learned: the content, the end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) so the model learns to
stop, and what the template writes after it within the turn (ChatML's ``\\n`` after ``<|im_end|>``).
This is TRL's convention for conversational prompt-completion data (the completion is the full
rendering minus the prompt rendered with the generation prompt), applied to every assistant turn.
Characters are mapped to tokens with the fast tokenizer's offsets; a token that overlaps a span is
learned (as in `apply_chat_template(..., return_assistant_tokens_mask=True)`). A BOS that the template
writes is kept; when the template writes none and the tokenizer adds BOS itself, one is put first,
so the sequence starts as `tokenizer(format_prompt(record))` does at generation time.

`train_on`: ``"assistant"`` (every assistant turn, the default), ``"last_assistant"`` (the last
one only; earlier answers are context) or ``"all"`` (every token, system and user turns included).

Too long conversations lose their oldest exchanges first (an exchange: the messages from a user
turn to the assistant turns that answer it), never the leading system prompt nor the last
exchange. When the system prompt and the last exchange alone do not fit, the sequence is cut at
`max_length` (the end of the last assistant turn is lost).

Example:
    >>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    >>> enc = encode_conversation(tokenizer, msgs, max_length=128)                  # doctest: +SKIP
    >>> tokenizer.decode([t for t in enc.labels if t != -100])                      # doctest: +SKIP
    'Hello!<|im_end|>\\n'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .collate import IGNORE_INDEX

__all__ = ["ChatEncoding", "ROLES", "TRAIN_ON", "assistant_spans", "check_conversations", "encode_conversation",
           "exchanges", "is_conversation", "message_problem", "prompt_messages", "reference_text", "render",
           "render_prompt", "require_chat_template", "shorten", "tokenizer_adds_bos"]

#: the roles a message may have
ROLES = ("system", "user", "assistant")
#: what `Preprocessor(train_on=...)` may learn
TRAIN_ON = ("assistant", "last_assistant", "all")

Messages = Sequence[Mapping[str, Any]]


def is_conversation(record: Mapping[str, Any]) -> bool:
    """True for a record with a `messages` field (a conversation); its other text fields are ignored."""
    return "messages" in record


# ---- checks ---------------------------------------------------------------------------------------
def message_problem(messages: Any, need_assistant: bool = True) -> str | None:
    """What is wrong with one conversation's `messages`, or None when it is usable.

    A conversation is a non-empty list of dicts, each with a `role` in `ROLES` and a non-empty
    string `content` (other keys are passed to the template as they are). With `need_assistant`
    (training and evaluation data) it also needs an assistant turn, a user turn before the first
    assistant turn, and must end with an assistant turn (what comes after the last one would be
    learned from nothing and has no reference).
    """
    if not isinstance(messages, (list, tuple)):
        return f"messages is a {type(messages).__name__}, not a list of {{'role', 'content'}} dicts"
    if not messages:
        return "messages is an empty list"
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            shown = type(m).__name__ if not isinstance(m, Mapping) else f"a dict with keys {sorted(map(str, m))}"
            return f"message {j} is {shown}, not a dict with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {j} has the unknown role {m['role']!r} (roles: {', '.join(ROLES)})"
        content = m["content"]
        if not isinstance(content, str):
            return f"message {j} ({m['role']}) has content of type {type(content).__name__}, not str"
        if not content.strip():
            return f"message {j} ({m['role']}) has empty content"
    if not need_assistant:
        return None
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return "the conversation has no assistant turn to learn"
    first = next(j for j, r in enumerate(roles) if r != "system")
    if roles[first] == "assistant":
        return f"message {first} is an assistant turn with no user turn before it"
    if roles[-1] != "assistant":
        return f"the conversation ends with a {roles[-1]} turn (message {len(roles) - 1}) after its last assistant turn"
    return None


_FIXES = {
    "not a list": "give messages as a list of {'role': ..., 'content': ...} dicts (a JSON array in JSONL)",
    "empty list": "drop these records",
    "not a dict": "give each message as a dict with 'role' and 'content'",
    "unknown role": f"use the roles {', '.join(ROLES)} (rename e.g. 'human' to 'user', 'gpt' to 'assistant')",
    "not str": "give each content as a string (multi-part contents are not supported: join their texts)",
    "empty content": "drop or fill the empty messages",
    "no assistant turn": "add the assistant's answer, or drop these records (predict() takes conversations "
                         "without one)",
    "no user turn": "start each conversation with a user turn (after the optional system prompt)",
    "after its last": "drop the trailing messages, or add the assistant's answer to them",
}


def check_conversations(records: Sequence[Mapping[str, Any]], split: str, need_assistant: bool = True) -> None:
    """Refuse bad conversation records before any work, naming the records (index in `split`) and the fix.

    Checks every record's `messages` with `message_problem`, and that a split does not mix
    conversations with prompt/target or text records.

    Raises:
        ValueError: with up to five problems and how to fix each kind.
    """
    chats = [i for i, r in enumerate(records) if is_conversation(r)]
    if not chats:
        return
    if len(chats) < len(records):
        chat_set = set(chats)
        other = [i for i in range(len(records)) if i not in chat_set]
        raise ValueError(f"The {split} data mixes conversations (records with 'messages', e.g. {chats[:5]}) with "
                         f"prompt/target or text records (e.g. {other[:5]}). Use one form per split: convert the "
                         "others with DatasetBuilder(...).to_messages(), or train on them separately.")
    problems: list[str] = []
    fixes: dict[str, None] = {}
    count = 0
    for i in chats:
        problem = message_problem(records[i]["messages"], need_assistant)
        if problem is None:
            continue
        count += 1
        if len(problems) < 5:
            problems.append(f"record {i}: {problem}")
        fixes.update({fix: None for key, fix in _FIXES.items() if key in problem})
    if count:
        more = f" ... ({count} in all)" if count > len(problems) else ""
        raise ValueError(f"{count} conversation(s) of the {split} data cannot be used: {'; '.join(problems)}{more}. "
                         f"To fix: {'; '.join(fixes)}.")


def require_chat_template(tokenizer: Any, chat_template: str | None = None) -> str:
    """The template to render conversations with: `chat_template` if given, else the tokenizer's.

    Raises:
        ValueError: neither exists, or the tokenizer is not a fast one (its offsets map characters to tokens).
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("The training data holds conversations (messages) but the tokenizer has no chat template. "
                         "Give one: Preprocessor(chat_template=...) with a Jinja template (e.g. ChatML: "
                         "\"{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}\"), or use the tokenizer "
                         "of an instruct/chat model.")
    if not isinstance(template, str):
        raise ValueError(f"chat_template must be a Jinja template string, not {type(template).__name__}. Pass one "
                         "of the tokenizer's named templates, e.g. tokenizer.chat_template['default'].")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"Conversations need a fast tokenizer (its offsets locate the assistant turns); "
                         f"{type(tokenizer).__name__} is not one. Load it with AutoTokenizer.from_pretrained(..., "
                         "use_fast=True).")
    return template


# ---- rendering --------------------------------------------------------------------------------------
def render(tokenizer: Any, messages: Messages | Sequence[Messages], chat_template: str | None = None,
           add_generation_prompt: bool = False) -> Any:
    """The text of a conversation (or a list of texts, for a list of conversations) under a chat template."""
    batched = bool(messages) and not isinstance(messages[0], Mapping)
    conversation = [list(m) for m in messages] if batched else list(messages)
    try:
        return tokenizer.apply_chat_template(conversation, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as err:  # jinja2's TemplateError and the template's own raise_exception()
        raise ValueError(f"The chat template could not render a conversation: {type(err).__name__}: {err}. "
                         "Check the roles' order the template accepts, or give Preprocessor(chat_template=...).") from err


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether calling the tokenizer (with special tokens) puts BOS first."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("")["input_ids"][:1] == [bos]


def drop_template_bos(tokenizer: Any, text: str, adds_bos: bool) -> str:
    """`text` without a leading BOS when the tokenizer adds one itself (so tokenizing gives exactly one)."""
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if adds_bos and bos and text.startswith(bos) else text


def prompt_messages(messages: Messages) -> list[Mapping[str, Any]]:
    """The messages a model answers: those before the last turn when it is the assistant's, else all."""
    messages = list(messages)
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def reference_text(messages: Messages) -> str:
    """The reference answer of a conversation: its last assistant turn's content ("" when it ends otherwise)."""
    return str(messages[-1]["content"]) if messages and messages[-1]["role"] == "assistant" else ""


def render_prompt(tokenizer: Any, messages: Messages, chat_template: str | None = None,
                  adds_bos: bool | None = None) -> str:
    """The generation prompt of a conversation: `prompt_messages` rendered with the generation prompt.

    A BOS written by the template is dropped when the tokenizer adds BOS itself, as
    `Preprocessor.format_prompt` does, so `tokenizer(prompt)` starts with exactly one.
    """
    text = render(tokenizer, prompt_messages(messages), chat_template, add_generation_prompt=True)
    return drop_template_bos(tokenizer, text, tokenizer_adds_bos(tokenizer) if adds_bos is None else adds_bos)


# ---- assistant spans and labels ---------------------------------------------------------------------
def assistant_spans(tokenizer: Any, messages: Messages, chat_template: str | None = None,
                    train_on: str = "assistant") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans `[start, end)` that carry the loss.

    Raises:
        ValueError: the template is not prefix-preserving (a message renders differently when more
            messages follow), so the turns cannot be located; the message names the fix.
    """
    full = render(tokenizer, messages, chat_template)
    if train_on == "all":
        return full, [(0, len(full))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    if not turns:
        return full, []
    opened = render(tokenizer, [messages[:i] for i in turns], chat_template, add_generation_prompt=True)
    closed = render(tokenizer, [messages[: i + 1] for i in turns], chat_template)
    spans = []
    for i, before, upto in zip(turns, opened, closed, strict=True):
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"The chat template renders the conversation's first {i + 1} messages differently on their own "
                f"than inside the whole conversation (before message {i}, the assistant's: {before[-60:]!r}; "
                f"up to it: {upto[-60:]!r}), so the assistant turns cannot be located. Give a template that "
                "renders each message the same wherever it stands (Preprocessor(chat_template=...); TRL ships "
                "such training variants: trl.chat_template_utils.get_training_chat_template(tokenizer)), or "
                "train_on='all'.")
        spans.append((len(before), len(upto)))
    return full, spans


def _labels(ids: list[int], offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """`ids` where a token overlaps a span (an empty token: lies inside one), else -100."""
    out = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        inside = any((start < b and end > a) if end > start else a <= start < b for a, b in spans)
        out.append(token if inside else IGNORE_INDEX)
    return out


# ---- exchanges and truncation -----------------------------------------------------------------------
def exchanges(messages: Messages) -> tuple[list[int], list[list[int]]]:
    """The indices of the leading system messages, and of each exchange in order.

    An exchange starts at the first non-assistant message after an assistant turn (or after the
    leading system messages) and runs to the end of the assistant turns that follow.

    Example:
        >>> roles = ["system", "user", "assistant", "user", "assistant"]
        >>> exchanges([{"role": r} for r in roles])
        ([0], [[1, 2], [3, 4]])
    """
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    groups: list[list[int]] = []
    for j in range(head, len(messages)):
        if not groups or (messages[j]["role"] != "assistant" and messages[j - 1]["role"] == "assistant"):
            groups.append([])
        groups[-1].append(j)
    return list(range(head)), groups


def shorten(messages: Messages, drop: int) -> list[Mapping[str, Any]]:
    """`messages` without its `drop` oldest exchanges (the leading system messages stay)."""
    head, groups = exchanges(messages)
    keep = head + [j for g in groups[drop:] for j in g]
    return [messages[j] for j in keep]


@dataclass
class ChatEncoding:
    """One encoded conversation."""

    input_ids: list[int]
    labels: list[int]
    #: messages dropped from the start (whole exchanges) to fit `max_length`
    dropped_turns: int = 0
    #: exchanges dropped
    dropped_exchanges: int = 0
    #: cut at `max_length` after dropping all but the last exchange
    truncated: bool = False
    #: tokens before the cut (the system prompt and the last exchange)
    length: int = 0


def _encode(tokenizer: Any, messages: Messages, chat_template: str | None, train_on: str,
            adds_bos: bool) -> ChatEncoding:
    text, spans = assistant_spans(tokenizer, messages, chat_template, train_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if adds_bos and bos is not None and ids[:1] != [bos]:  # the tokenizer's own BOS, as at generation time
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    labels = _labels(ids, offsets, spans)
    return ChatEncoding(ids, labels, length=len(ids))


def encode_conversation(tokenizer: Any, messages: Messages, chat_template: str | None = None,
                        train_on: str = "assistant", max_length: int | None = None,
                        adds_bos: bool | None = None) -> ChatEncoding:
    """Token ids and labels (-100 outside the learned spans) of one conversation, fitted to `max_length`.

    Too long, it loses its oldest exchanges first (the fewest that make it fit; the leading system
    messages and the last exchange always stay); when those alone do not fit, it is cut at
    `max_length` and `truncated` is set.

    Args:
        tokenizer: a fast tokenizer.
        messages: the conversation (checked with `message_problem` beforehand).
        chat_template: the template; None uses the tokenizer's.
        train_on: one of `TRAIN_ON`.
        max_length: the most tokens; None keeps all.
        adds_bos: whether the tokenizer adds BOS (None: found out by calling it).
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(map(repr, TRAIN_ON))}, not {train_on!r}.")
    adds_bos = tokenizer_adds_bos(tokenizer) if adds_bos is None else adds_bos
    enc = _encode(tokenizer, messages, chat_template, train_on, adds_bos)
    if max_length is None or len(enc.input_ids) <= max_length:
        return enc
    _, groups = exchanges(messages)
    # the fewest oldest exchanges to drop (binary search: fewer messages, fewer tokens), all but the last at most
    low, high, best = 1, len(groups) - 1, None
    while low <= high:
        mid = (low + high) // 2
        candidate = _encode(tokenizer, shorten(messages, mid), chat_template, train_on, adds_bos)
        if len(candidate.input_ids) <= max_length:
            best, high = (mid, candidate), mid - 1
        else:
            low = mid + 1
    if best is None:  # the system prompt and the last exchange alone are too long: cut the last turn
        drop = len(groups) - 1
        if drop:
            enc = _encode(tokenizer, shorten(messages, drop), chat_template, train_on, adds_bos)
        enc.input_ids, enc.labels, enc.truncated = enc.input_ids[:max_length], enc.labels[:max_length], True
    else:
        drop, enc = best
    enc.dropped_exchanges, enc.dropped_turns = drop, sum(len(g) for g in groups[:drop])
    return enc
