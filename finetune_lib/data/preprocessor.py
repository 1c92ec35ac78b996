"""`Preprocessor`: clean text, map labels, format prompts and targets, tokenize, truncate, collate.

Example:
    >>> pre = Preprocessor(clean=["html", "whitespace"], max_length=128)
    >>> pre.setup(tokenizer, "classification", train_records)
    >>> features = pre.encode(train_records)
    >>> batch = pre.collate(features[:8])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import chat
from .arrow_data import is_arrow
from .collate import IGNORE_INDEX, collate
from .encode_stats import EncodeStats
from .packing import collate_packed

log = logging.getLogger(__name__)


class Preprocessor:
    """Turns records into model features.

    Args:
        clean: cleaning steps, by name (see `finetune_lib.data.cleaning.STEPS`) or as callables
            `str -> str`; None gives the safe defaults (unicode normalization, HTML, whitespace);
            `[]` turns cleaning off.
        max_length: tokens per example after truncation; None uses the model's position limit
            (at most 512). A larger value than the model supports is lowered to its limit.
        strict: raise instead of truncating sequences longer than `max_length`.
        prompt_template: format of the prompt for generation tasks, with `{prompt}` (and any other
            record column) as fields, e.g. `"Question: {prompt}\\nAnswer: "`.
        use_chat_template: format prompts with the tokenizer's chat template, where it has one.
        labels: the label names in id order; by default sorted from the training data. Integer
            labels must be exactly 0..K-1 (they keep their values); 1-based or sparse integers raise
            with the fix (re-number them, or pass them here to use them as names in this order).
        batch_size: texts per call of the fast tokenizer.
        pack: causal LM only: pack several training examples into each row of at most
            `pack_length` tokens, attention kept inside each example (see
            `finetune_lib.data.packing`). Only the "train" split is packed; evaluation stays
            per example. `batch_size` then counts rows, not examples.
        pack_length: tokens per packed row; None uses `max_length`. Examples are truncated to
            `min(max_length, pack_length)` by the usual rules.
        chat_template: a Jinja chat template for conversation records (`{"messages": [...]}`); it
            wins over the tokenizer's and is set on the tokenizer by `setup` (so a saved model keeps it).
        train_on: what a conversation learns (`finetune_lib.data.chat`): "assistant" (every
            assistant turn, with its end-of-turn token), "last_assistant" (the last one only) or
            "all" (every token). Too long conversations drop their oldest exchanges first (counted in
            `stats[split].conversations_shortened` and `dropped_turns`); when the system prompt and
            the last exchange alone do not fit, the last assistant turn is cut (counted as truncated)
            or, with `strict=True`, refused.
        label_all_subtokens: token classification: give every sub-token of a word its word's tag
            (`B-X` becomes `I-X` after the first piece) instead of labelling the first sub-token
            only (the others -100). Evaluation and `predict` read the first sub-token either way
            (`finetune_lib.data.token_labels`).
        cache_dir: Arrow-backed records only (a `datasets.Dataset` or `ArrowRecords`): where tokenized
            features are cached (`finetune_lib.data.encode_cache`); None: `$FINETUNE_LIB_CACHE`, else
            `~/.cache/finetune_lib/tokenized`; False: no cache. A second `encode` of the same data with
            the same tokenizer and settings reads the cache instead of tokenizing.
        num_proc: Arrow-backed records only: processes that tokenize (forked workers, one shard of the
            rows each); the features are the same as with one.
    """

    def __init__(self, clean: Sequence[str | Callable[[str], str]] | None = None, max_length: int | None = None,
                 strict: bool = False, prompt_template: str = "{prompt}", use_chat_template: bool = False,
                 labels: Sequence[Any] | None = None, batch_size: int = 1000, pack: bool = False,
                 pack_length: int | None = None, chat_template: str | None = None, train_on: str = "assistant",
                 label_all_subtokens: bool = False, cache_dir: str | Path | bool | None = None, num_proc: int = 1):
        if train_on not in chat.TRAIN_ON:
            raise ValueError(f"train_on must be one of {', '.join(map(repr, chat.TRAIN_ON))}, not {train_on!r}.")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {max_length}.")
        if pack_length is not None and pack_length < 2:
            raise ValueError(f"pack_length must be at least 2 tokens, got {pack_length}.")
        if not isinstance(num_proc, int) or num_proc < 1:
            raise ValueError(f"num_proc must be a whole number of processes, 1 or more, not {num_proc!r}.")
        from .cleaning import DEFAULT_STEPS, compose

        self.clean_steps = list(DEFAULT_STEPS if clean is None else clean)
        self.clean_text = compose(self.clean_steps)
        self.max_length = max_length
        self.strict = strict
        self.prompt_template = prompt_template
        self.use_chat_template = use_chat_template
        self.label_names: list[Any] | None = list(labels) if labels is not None else None
        self.batch_size = batch_size
        self.pack, self.pack_length = pack, pack_length
        self.chat_template, self.train_on = chat_template, train_on
        self.label_all_subtokens = label_all_subtokens
        self.cache_dir, self.num_proc = cache_dir, num_proc
        #: the form of packed rows' attention mask; FineTuner sets it for its model (`packing.packed_mask_dtype`)
        self.packed_mask_dtype: torch.dtype = torch.float32
        self.tokenizer: Any = None
        self.task: str | None = None
        self.label2id: dict[Any, int] = {}
        self.observed_labels: list[Any] = []
        self.stats: dict[str, EncodeStats] = {}

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self, tokenizer: Any, task: str, train_records: Sequence[Mapping[str, Any]] | None = None,
              max_positions: int | None = None) -> Preprocessor:
        """Bind a tokenizer and a task, learn the label mapping, settle `max_length`."""
        if self.pack and task != "causal_lm":
            raise ValueError(f"pack=True is for task 'causal_lm' only, not {task!r}. Set pack=False.")
        self.tokenizer, self.task = tokenizer, task
        if self.chat_template:  # the user's template wins, and is saved with the tokenizer
            tokenizer.chat_template = self.chat_template
        if train_records is not None and is_arrow(train_records):  # read column-wise
            from .arrow_data import column_names, distinct_label_records

            conversations = "messages" in column_names(train_records)
            if _label_kind(task) in ("class", "classes") and "label" in column_names(train_records):
                train_records = distinct_label_records(train_records)  # the mapping needs each label once
        else:
            conversations = train_records is not None and any(chat.is_conversation(r) for r in train_records)
        if conversations:
            if task != "causal_lm":
                raise ValueError(f"Conversation records (messages) are for task 'causal_lm', not {task!r}.")
            chat.require_chat_template(tokenizer, self.chat_template)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("The tokenizer has neither a pad token nor an EOS token; set "
                                 "tokenizer.pad_token before fine-tuning.")
            tokenizer.pad_token = tokenizer.eos_token
        limits = [n for n in (max_positions, getattr(tokenizer, "model_max_length", None)) if n and n < 10**6]
        limit = min(limits) if limits else None
        if self.max_length is None:
            self.max_length = min([512] + ([limit] if limit else []))
        elif limit and self.max_length > limit:
            log.warning("max_length %d is more than the model's limit of %d positions; using %d.",
                        self.max_length, limit, limit)
            self.max_length = limit
        if _label_kind(task) in ("class", "classes") and train_records is not None and not self.label2id:
            self.fit_labels(train_records)
        if _label_kind(task) == "tags" and train_records is not None and not self.label2id:  # token classification
            from .token_labels import tag_label_records

            self.fit_labels(tag_label_records(self, train_records))
        return self

    def fit_labels(self, records: Sequence[Mapping[str, Any]]) -> dict[Any, int]:
        """Learn `label2id` from the training records (or from `labels=` given at construction).

        Strings are names, in sorted order. Integers are class ids and keep their values, so they
        must be exactly 0..K-1: 1-based, sparse or negative ids are refused with the values found
        and the fix (re-number them, or pass `labels=[...]` to use them as names in that order).
        """
        # a multi-label record's list counts each of its labels
        values = [v for r in records for v in (r["label"] if isinstance(r["label"], (list, tuple)) else [r["label"]])]
        kinds = {type(v).__name__ for v in values if v is not None}
        if any(v is None for v in values):
            bad = [i for i, v in enumerate(values) if v is None][:10]
            raise ValueError(f"Records {bad} have no label. Drop them or fill them before training.")
        numeric = kinds <= {"int", "bool"} or kinds <= {"int", "float"} and all(float(v).is_integer() for v in values)
        if len(kinds) > 1 and not numeric:
            examples: dict[str, Any] = {}
            for i, v in enumerate(values):
                examples.setdefault(type(v).__name__, f"{v!r} (record {i})")
            raise ValueError(f"Labels have mixed types ({', '.join(sorted(kinds))}), e.g. "
                             f"{', '.join(examples[k] for k in sorted(examples))}. Use one type: all "
                             "strings (names) or all integers (ids).")
        self.observed_labels = sorted({int(v) for v in values} if numeric else set(values))
        if self.label_names is None:
            if numeric:
                # integer labels are class ids and keep their values, so they must be exactly 0..K-1:
                # 1-based or sparse ids would build a head with classes that never occur
                ints = self.observed_labels
                if ints != list(range(len(ints))):
                    k = len(ints)
                    shown = ", ".join(map(str, ints[:20])) + (f", ... ({k} values)" if k > 20 else "")
                    names = f"Preprocessor(labels={ints})" if k <= 20 else "Preprocessor(labels=sorted(set(labels)))"
                    fixes = [f"re-number them to 0..{k - 1}", f"pass {names} to treat them as names in that order "
                             f"(ids 0..{k - 1}; the names are saved in the model config)"]
                    if ints[0] < 0:
                        why = f"negative values {[v for v in ints if v < 0][:10]}"
                    elif ints == list(range(1, k + 1)):
                        why, fixes[0] = f"they look 1-based (1..{k})", "subtract 1 so they run 0.." + str(k - 1)
                    else:
                        from itertools import islice

                        present = set(ints)
                        why = f"ids {list(islice((i for i in range(ints[-1]) if i not in present), 10))} never occur"
                        fixes.append(f"pass Preprocessor(labels=list(range({ints[-1] + 1}))) to keep the values as "
                                     "ids when those classes are only missing from the training data")
                    raise ValueError(f"Integer labels are class ids and must be exactly 0..K-1, but the training "
                                     f"labels are {{{shown}}}: {why}. To fix it, {'; or '.join(fixes)}.")
                self.label_names = list(ints)
            else:
                self.label_names = sorted(set(values))
        self.label2id = {name: i for i, name in enumerate(self.label_names)}
        if numeric:
            self.label2id.update({float(k): v for k, v in self.label2id.items() if isinstance(k, int)})
        return self.label2id

    @property
    def id2label(self) -> dict[int, str]:
        return {i: str(name) for i, name in enumerate(self.label_names or [])}

    @property
    def num_labels(self) -> int:
        return len(self.label_names or [])

    def label_id(self, value: Any, where: str = "") -> int:
        try:
            return self.label2id[value]
        except KeyError:
            known = ", ".join(map(repr, list(self.label_names or [])[:20]))
            raise ValueError(f"Label {value!r}{where} was never seen in the training data (known: {known}). "
                             "Add examples of it to training, or remove it from this split.") from None

    def _label_feature(self, value: Any, where: str, kind: str | None) -> Any:
        """The `labels` feature of a record's label for a task's `label_kind`: a class id, a multi-label
        row of 0.0/1.0 per label, or a regression value (float)."""
        if kind == "value":
            return float(value)
        if kind == "classes":
            row = [0.0] * self.num_labels
            for name in value:
                row[self.label_id(name, where)] = 1.0
            return row
        return self.label_id(value, where)

    # ---- encoding ---------------------------------------------------------------------------
    def _require_setup(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError("Preprocessor.setup(tokenizer, task, train_records) must run before encoding; "
                               "FineTuner does this for you in fit().")

    def format_prompt(self, record: Mapping[str, Any]) -> str:
        """The prompt text of a generation record, as fed to the model.

        A conversation (`{"messages": [...]}`) gives the messages before its last assistant turn
        (all of them when it ends with another role), contents cleaned, rendered by the chat
        template with the generation prompt; a BOS that the template writes is dropped when the
        tokenizer adds BOS itself (`finetune_lib.data.chat.render_prompt`). Other records follow
        these rules, in order:

        1. The record's `prompt` is cleaned, then formatted with `prompt_template` (which may use
           any other record column). An empty prompt gives `""`: the target is then learned whole.
        2. With `use_chat_template=True` and a tokenizer that has a `chat_template`, that text is
           the content of one user message, rendered by the chat template with the generation
           prompt (the opening of the assistant's turn), so the target is learned as the
           assistant's reply. `prompt_template` is therefore not ignored: it shapes the user
           message (keep the default `"{prompt}"` to pass the prompt as it is). A BOS token that
           the template writes at the start is dropped when the tokenizer adds BOS itself, so the
           tokenized sequence starts with exactly one.
        3. With `use_chat_template=True` and a tokenizer without a chat template, rule 1 alone
           applies (the fallback), and a warning says so once.

        Example:
            >>> tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
            ...     "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
            >>> pre = Preprocessor(prompt_template="Q: {prompt}", use_chat_template=True)
            >>> pre.setup(tokenizer, "causal_lm").format_prompt({"prompt": "Is the battery good?"})
            '<|user|>Q: Is the battery good?<|assistant|>'
        """
        if chat.is_conversation(record):
            return chat.render_prompt(self.tokenizer, self._messages(record), self._template(), self._tokenizer_adds_bos())
        prompt = self.clean_text(str(record.get("prompt", "") or ""))
        if not prompt:
            return ""
        text = self.prompt_template.format(**{**record, "prompt": prompt})
        if not self.use_chat_template:
            return text
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            if not getattr(self, "_warned_no_chat_template", False):
                self._warned_no_chat_template = True
                log.warning("use_chat_template=True but the tokenizer has no chat_template; prompts are "
                            "formatted with prompt_template=%r alone. Set tokenizer.chat_template, or "
                            "use_chat_template=False to silence this.", self.prompt_template)
            return text
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
        # the tokenizer is called with its special tokens on: drop the template's BOS if it adds one
        return chat.drop_template_bos(tok, text, self._tokenizer_adds_bos())

    def reference(self, record: Mapping[str, Any]) -> str:
        """The reference text of a generation record, for text metrics: `target` (or `text`), or a
        conversation's last assistant turn."""
        if chat.is_conversation(record):
            return chat.reference_text(record["messages"])
        return str(record.get("target", record.get("text", "")))

    def _tokenizer_adds_bos(self) -> bool:
        cached = getattr(self, "_adds_bos", None)
        if cached is None or cached[0] is not self.tokenizer:
            cached = self._adds_bos = (self.tokenizer, chat.tokenizer_adds_bos(self.tokenizer))
        return cached[1]

    def _template(self) -> str:
        return chat.require_chat_template(self.tokenizer, self.chat_template)

    def _messages(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A conversation's messages with their contents cleaned."""
        return [{**m, "content": self.clean_text(str(m["content"]))} for m in record["messages"]]

    def encode(self, records: Sequence[Mapping[str, Any]] | Any, split: str = "train") -> Sequence[dict[str, Any]]:
        """Features for each record: `input_ids`, `attention_mask`, `labels`. Counts truncations.

        With `pack=True` the "train" split comes back as packed rows (`finetune_lib.data.packing`).
        Arrow-backed records (a `datasets.Dataset`, or `ArrowRecords`) give `ArrowFeatures`: the same
        features, memory-mapped from the tokenization cache (`cache_dir`), encoded in `num_proc`
        processes (`finetune_lib.data.arrow_encode`).

        Example:
            >>> features = pre.encode(datasets.Dataset.from_list(records))   # ArrowFeatures
            >>> features[0] == pre.encode(records)[0]
            True
        """
        self._require_setup()
        packing = self.pack and split == "train"
        limit = min(int(self.max_length or 512), self.pack_length or 10**9) if packing else None
        if is_arrow(records):
            from .arrow_encode import encode_arrow

            features: Sequence[dict[str, Any]] = encode_arrow(self, records, split, limit, _label_kind(self.task))
        else:
            features = self._encode_records(records, split, limit)
        st = self.stats[split]
        if st.conversations_shortened:
            log.info("%s: %d of %d conversations lost their oldest exchanges (%d messages) to fit %d tokens.",
                     split, st.conversations_shortened, st.examples, st.dropped_turns,
                     limit or self.max_length)
        if st.truncated:
            log.info("%s: %d of %d examples truncated to %d tokens.", split, st.truncated, st.examples,
                     limit or self.max_length)
        if packing:
            from .packing import pack_features, packing_efficiency

            row_length = int(self.pack_length or self.max_length or 512)
            features = pack_features(features, row_length)
            st.packed_rows, st.packing_efficiency = len(features), packing_efficiency(features, row_length)
            log.info("%s: %d examples packed into %d rows of %d tokens (%.0f%% filled).", split, st.examples,
                     st.packed_rows, row_length, 100 * st.packing_efficiency)
        return features

    def _encode_records(self, records: Sequence[Mapping[str, Any]], split: str,
                        limit: int | None) -> list[dict[str, Any]]:
        """The features of a list of records (not packed); sets `stats[split]`."""
        if _label_kind(self.task) == "tags":  # words and their tags (`finetune_lib.data.token_labels`)
            from .token_labels import encode_tagged

            return encode_tagged(self, records, split)
        if _label_kind(self.task) is not None:  # text and label, for a sequence head
            return self._encode_classification(records, split)
        if any(chat.is_conversation(r) for r in records):
            return self._encode_conversations(records, split, limit)
        return self._encode_generation(records, split, limit)

    def _tokenize(self, texts: list[str], **kw: Any) -> list[list[int]]:
        out: list[list[int]] = []
        for i in range(0, len(texts), self.batch_size):
            out.extend(self.tokenizer(texts[i: i + self.batch_size], **kw)["input_ids"])
        return out

    def _encode_classification(self, records: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
        texts = [self.clean_text(str(r["text"])) for r in records]
        kind = _label_kind(self.task)
        labels = [self._label_feature(r["label"], f" (record {i} of {split})", kind) if "label" in r else None
                  for i, r in enumerate(records)]
        stats = EncodeStats(examples=len(texts))
        features: list[dict[str, Any]] = []
        limit = int(self.max_length or 0)
        for start in range(0, len(texts), self.batch_size):
            # only the ids come back to Python: masks are rebuilt from lengths, token types are all 0
            enc = self.tokenizer(texts[start: start + self.batch_size], truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)
            for j, ids in enumerate(enc["input_ids"]):
                if len(ids) >= limit and enc.encodings and enc.encodings[j].overflowing:
                    self._truncated(stats, start + j, split)
                f: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
                if labels[start + j] is not None:
                    f["labels"] = labels[start + j]
                features.append(f)
        self.stats[split] = stats
        return features

    def _encode_generation(self, records: Sequence[Mapping[str, Any]], split: str,
                           limit: int | None = None) -> list[dict[str, Any]]:
        tok, limit = self.tokenizer, int(limit or self.max_length or 512)
        eos = tok.eos_token_id
        prompts = [self.format_prompt(r) if "prompt" in r or "target" in r else "" for r in records]
        targets = [self.clean_text(str(r["target"] if "target" in r else r.get("text", ""))) for r in records]
        prompt_ids = self._tokenize(prompts) if any(prompts) else [[] for _ in prompts]
        if self.task == "seq2seq":
            target_ids = self._tokenize(targets)
            target_ids = [t if t and t[-1] == eos else t + [eos] for t in target_ids]
        else:
            target_ids = [t + [eos] for t in self._tokenize(targets, add_special_tokens=False)]
            # a text-only record is learned whole, BOS included when the tokenizer adds one
            start = self._tokenize([""])[0]
            prompt_ids = [p if prompts[i] else list(start) for i, p in enumerate(prompt_ids)]
        stats = EncodeStats(examples=len(records))
        features = []
        for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
            if self.task == "seq2seq":
                if len(p) > limit or len(t) > limit:
                    self._truncated(stats, i, split)
                    p, t = p[:limit], t[:limit]
                features.append({"input_ids": p, "attention_mask": [1] * len(p), "labels": t})
                continue
            if len(p) + len(t) > limit:
                self._truncated(stats, i, split, limit)
                keep_prompt = max(0, limit - len(t))  # cut the prompt from the left first, then the target's end
                p = p[len(p) - keep_prompt:] if keep_prompt else []
                t = t[: limit - len(p)]
            ids = p + t
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                             "labels": [IGNORE_INDEX] * len(p) + t})
        self._check_targets(features, split)
        self.stats[split] = stats
        return features

    def _encode_conversations(self, records: Sequence[Mapping[str, Any]], split: str,
                              limit: int | None = None) -> list[dict[str, Any]]:
        """Conversations rendered with the chat template, the loss on `train_on` (`finetune_lib.data.chat`)."""
        if self.task != "causal_lm":
            raise ValueError(f"Conversation records (messages) are for task 'causal_lm', not {self.task!r}.")
        chat.check_conversations(records, split, need_assistant=True)
        template, limit = self._template(), int(limit or self.max_length or 512)
        stats = EncodeStats(examples=len(records))
        features = []
        for i, r in enumerate(records):
            enc = chat.encode_conversation(self.tokenizer, self._messages(r), template, self.train_on, limit,
                                           self._tokenizer_adds_bos())
            if enc.dropped_turns:
                stats.conversations_shortened += 1
                stats.dropped_turns += enc.dropped_turns
            if enc.truncated:
                if self.strict:
                    raise ValueError(f"Record {i} of {split}: its system prompt and last exchange alone take "
                                     f"{enc.length} tokens, more than {limit} (max_length{', pack_length' if limit != self.max_length else ''}), "
                                     "and strict=True. Raise max_length, shorten the last exchange, or set "
                                     "strict=False to cut the last assistant turn.")
                self._truncated(stats, i, split, limit)
            features.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
                             "labels": enc.labels})
        self._check_targets(features, split)
        self.stats[split] = stats
        return features

    def _truncated(self, stats: EncodeStats, index: int, split: str, limit: int | None = None) -> None:
        if self.strict:
            what = f"pack_length={limit}" if limit is not None and limit != self.max_length else \
                f"max_length={self.max_length}"
            raise ValueError(f"Record {index} of {split} is longer than {what} tokens "
                             "and strict=True. Raise max_length, shorten the text, or set strict=False to truncate.")
        stats.truncated += 1
        if len(stats.truncated_indices) < 100:
            stats.truncated_indices.append(index)

    def _check_targets(self, features: list[dict[str, Any]], split: str) -> None:
        """Pre-flight: every example must keep at least one target token that carries a loss."""
        if self.task != "causal_lm":
            return
        empty = [i for i, f in enumerate(features) if sum(1 for x in f["labels"][1:] if x != IGNORE_INDEX) == 0]
        if empty:
            raise ValueError(f"{len(empty)} examples of {split} have no target token left to learn "
                             f"(records {empty[:10]}): their target is empty or was truncated away. "
                             f"Raise max_length (now {self.max_length}) or shorten their prompts.")

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad features to the longest in the batch (dynamic padding)."""
        if "seq_lengths" in features[0]:  # packed rows: block-diagonal causal mask (finetune_lib.data.packing)
            return collate_packed(features, int(self.tokenizer.pad_token_id), mask_dtype=self.packed_mask_dtype)
        return collate(features, pad_token_id=int(self.tokenizer.pad_token_id))

    @staticmethod
    def length(feature: Mapping[str, Any]) -> int:
        n = len(feature["input_ids"])
        labels = feature.get("labels")
        if isinstance(labels, list) and labels and isinstance(labels[0], float):
            return n  # a multi-label row (one value per label), not tokens
        return max(n, len(labels)) if isinstance(labels, list) else n


#: what a record's ``label`` is for the tasks over text and label: their `Task.label_kind` ("class", "classes"
#: for multi-label, "value" for regression), kept here so that the data layer imports no task module
LABEL_KINDS = {"classification": "class", "multilabel_classification": "classes", "regression": "value",
               "token_classification": "tags"}


def _label_kind(task: str | None) -> str | None:
    """`Task.label_kind` of a task name; None for generation and other tasks."""
    return LABEL_KINDS.get(task or "")
