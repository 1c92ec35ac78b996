"""Token classification data: words and their tags, character spans, tag schemes, sub-token alignment.

Records come in two forms, both checked by `check_tagged_records` before any training:

* words and tags: ``{"tokens": ["Angela", "Merkel", "visited", "Paris"], "tags": ["B-PER", "I-PER", "O",
  "B-LOC"]}``, one tag per word;
* a text and character spans: ``{"text": "Angela Merkel visited Paris", "spans": [{"start": 0, "end": 13,
  "label": "PER"}, {"start": 22, "end": 27, "label": "LOC"}]}``, turned into words and tags by
  `spans_to_tags`: the text is split into words with `split_words` (a run of letters, digits and
  underscores is a word, and so is each other non-space character: ``"Merkel's"`` gives ``Merkel``,
  ``'``, ``s``), and a word takes the span's type when it overlaps the span.

Tags may follow IOB2 (``B-X`` on the first word of each entity, ``I-X`` on the others), IOB1
(``I-X`` everywhere, ``B-X`` only between two adjacent entities of one type) or BIOES/IOBES
(``S-X`` a one-word entity, ``E-X`` the last word). `to_iob2` reads the entities as the CoNLL
``conlleval`` script does and writes them back in IOB2, which is what the model learns, so its
labels are ``O``, ``B-X`` and ``I-X`` and ``pipeline("token-classification",
aggregation_strategy="simple")`` groups its entities.

Alignment (`align_labels`): the fast tokenizer splits words into sub-tokens and says which word
each token comes from (``word_ids()``). The first sub-token of each word gets the word's tag; the
others get -100 (no loss), or, with ``label_all_subtokens=True``, the word's tag with ``B-`` turned
into ``I-``. Special tokens and padding get -100. Truncation drops the last words whole from the
labels too: alignment always follows ``word_ids()``.

Example:
    >>> spans_to_tags("Angela Merkel visited Paris.", [{"start": 0, "end": 13, "label": "PER"}])
    (['Angela', 'Merkel', 'visited', 'Paris', '.'], ['B-PER', 'I-PER', 'O', 'O', 'O'])
    >>> to_iob2(["I-PER", "I-PER", "O", "S-LOC"])
    ['B-PER', 'I-PER', 'O', 'B-LOC']
    >>> align_labels([None, 0, 0, 1, None], ["B-PER", "O"], {"O": 0, "B-PER": 1, "I-PER": 2})
    [-100, 1, -100, 0, -100]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..metrics.entities import extract_entities
from .encode_stats import EncodeStats
from .values import DataError

IGNORE_INDEX = -100
PREFIXES = ("B", "I", "E", "S")
_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """The words of `text` with their character offsets ``(word, start, end)``: a run of word characters
    (letters, digits, underscore) is a word, and so is each other non-space character.

    Example:
        >>> split_words("Hi, Bob!")
        [('Hi', 0, 2), (',', 2, 3), ('Bob', 4, 7), ('!', 7, 8)]
    """
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def tag_problem(tag: Any) -> str | None:
    """Why `tag` is not a usable tag (``"O"`` or ``<B|I|E|S>-<type>``), or None."""
    if not isinstance(tag, str):
        return f"{tag!r} is a {type(tag).__name__}, not a tag name"
    if tag == "O":
        return None
    prefix, _, type_ = tag.partition("-")
    if prefix not in PREFIXES or not _:
        return (f"{tag!r} is neither 'O' nor a B-/I-/E-/S- tag with an entity type; tags follow IOB2 "
                "(e.g. 'B-PER', 'I-PER', 'O'), IOB1 or BIOES")
    if not type_.strip():
        return f"{tag!r} has no entity type after its prefix (write e.g. '{prefix}-PER')"
    return None


def to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB2 tags of the same entities (read as `extract_entities` reads them: IOB1, IOB2 or BIOES).

    Example:
        >>> to_iob2(["I-ORG", "B-ORG", "O", "B-PER", "E-PER"])
        ['B-ORG', 'B-ORG', 'O', 'B-PER', 'I-PER']
    """
    out = ["O"] * len(tags)
    for type_, first, last in extract_entities(tags):
        out[first] = f"B-{type_}"
        for i in range(first + 1, last + 1):
            out[i] = f"I-{type_}"
    return out


def spans_to_tags(text: str, spans: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Words of `text` (`split_words`) and their IOB2 tags from character spans ``{"start", "end", "label"}``.

    A word takes a span's label when it overlaps the span (``start`` inclusive, ``end`` exclusive):
    ``B-<label>`` on the first such word, ``I-<label>`` on the others. Spans are checked first
    (`span_problem`); a word that two spans share is refused.
    """
    problem = span_problem(text, spans)
    if problem:
        raise DataError(problem)
    words = split_words(text)
    tags = ["O"] * len(words)
    for span in sorted(spans, key=lambda s: s["start"]):
        inside = [i for i, (_, ws, we) in enumerate(words) if ws < span["end"] and we > span["start"]]
        if not inside:
            raise DataError(f"span {dict(span)} covers no word of the text (only spaces?); drop it or fix its offsets")
        taken = [i for i in inside if tags[i] != "O"]
        if taken:
            raise DataError(f"span {dict(span)} shares the word {words[taken[0]][0]!r} with another span: a word has "
                            "one tag. Move the span boundaries to word boundaries (words split at spaces and "
                            "punctuation), or give the words as tokens/tags.")
        for n, i in enumerate(inside):
            tags[i] = f"{'B' if n == 0 else 'I'}-{span['label']}"
    return [w for w, _, _ in words], tags


def span_problem(text: Any, spans: Any) -> str | None:
    """Why `spans` cannot label `text`, or None: each span is ``{"start": int, "end": int, "label": str}``
    with ``0 <= start < end <= len(text)``, a type as label (no B-/I- prefix), and no two spans overlap."""
    if not isinstance(text, str):
        return f"the text is a {type(text).__name__}, not a string"
    if not isinstance(spans, (list, tuple)):
        return f"spans is a {type(spans).__name__}; give a list of {{'start', 'end', 'label'}} dicts ([] for none)"
    for span in spans:
        if not isinstance(span, Mapping) or not {"start", "end", "label"} <= set(span):
            return f"span {span!r} needs the keys 'start', 'end' (character offsets) and 'label' (e.g. 'PER')"
        start, end, label = span["start"], span["end"], span["label"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            return f"span {dict(span)}: start and end must be int character offsets"
        if not 0 <= start < end <= len(text):
            return (f"span {dict(span)} is out of range for a text of {len(text)} characters: "
                    "0 <= start < end <= len(text) (end is exclusive)")
        if not isinstance(label, str) or not label.strip() or tag_problem(label) is None:
            return f"span {dict(span)}: label must be an entity type such as 'PER' (no B-/I- prefix, not 'O')"
    ordered = sorted(spans, key=lambda s: (s["start"], s["end"]))
    for a, b in zip(ordered, ordered[1:]):
        if b["start"] < a["end"]:
            return (f"spans {dict(a)} and {dict(b)} overlap; nested or overlapping entities cannot be tagged one "
                    "tag per word: keep one of them")
    return None


def tagged_record_problem(record: Mapping[str, Any], need_tags: bool = True) -> str | None:
    """Why a token classification record cannot be used, or None (see the module docstring for the forms)."""
    if "tokens" in record:
        tokens = record["tokens"]
        if not isinstance(tokens, (list, tuple)) or not tokens:
            return f"tokens must be a non-empty list of words, got {_short(tokens)}"
        bad = [i for i, t in enumerate(tokens) if not isinstance(t, str) or not t.strip()]
        if bad:
            return (f"tokens[{bad[0]}] is {_short(tokens[bad[0]])}: every word must be a non-empty string "
                    "(drop empty words together with their tags)")
        if not need_tags:
            return None
        if "tags" not in record:
            return "it has tokens but no tags (one tag per word, e.g. 'B-PER', 'I-PER', 'O')"
        tags = record["tags"]
        if not isinstance(tags, (list, tuple)):
            return f"tags must be a list of tag names, got {_short(tags)}"
        if len(tags) != len(tokens):
            return (f"it has {len(tokens)} tokens but {len(tags)} tags: give exactly one tag per word "
                    "(use 'O' for words outside entities)")
        for i, tag in enumerate(tags):
            problem = tag_problem(tag)
            if problem:
                return f"tags[{i}]: {problem}"
        return None
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str) or not split_words(text):
            return f"text must be a string with at least one word, got {_short(text)}"
        if not need_tags:
            return None
        if "spans" not in record:
            return "it has a text but no spans (a list of {'start', 'end', 'label'} dicts, [] for none)"
        return span_problem(text, record["spans"])
    return "it has neither tokens (with tags) nor text (with spans)"


def _short(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def check_tagged_records(records: Sequence[Mapping[str, Any]], split: str, need_tags: bool = True) -> None:
    """Refuse records that token classification cannot read, naming up to 5 of them and the fix."""
    problems = []
    count = 0
    for i, record in enumerate(records):
        problem = tagged_record_problem(record, need_tags)
        if problem:
            count += 1
            if len(problems) < 5:
                problems.append(f"record {i}: {problem}")
    if count:
        raise ValueError(f"{count} record(s) of the {split} data cannot be used for task 'token_classification': "
                         f"{'; '.join(problems)}{' ...' if count > len(problems) else ''}. Records are "
                         "{'tokens': [words], 'tags': [one tag per word]} or {'text': str, 'spans': "
                         "[{'start', 'end', 'label'}]}.")


def normalize_tagged(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with ``tokens`` and IOB2 ``tags`` (from its spans, or its tags in any scheme); other keys kept.

    A text record keeps its ``text`` and ``spans`` and gains ``tokens``, ``tags`` and
    ``word_offsets`` (each word's ``[start, end)`` in the text). A record without tags (prediction)
    gets tokens only.
    """
    out = dict(record)
    if "tokens" in out:
        out["tokens"] = list(out["tokens"])
        if "tags" in out:
            out["tags"] = to_iob2(list(out["tags"]))
        return out
    words = split_words(out["text"])
    out["tokens"] = [w for w, _, _ in words]
    out["word_offsets"] = [[s, e] for _, s, e in words]
    if "spans" in out:
        out["tags"] = spans_to_tags(out["text"], out["spans"])[1]
    return out


def tag_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The label list of normalized records: ``"O"``, then ``B-X`` and ``I-X`` for each entity type X in
    sorted order (both, even when a type never spans two words: continuation sub-tokens need ``I-X``).

    Example:
        >>> tag_names([{"tokens": ["a", "b"], "tags": ["B-PER", "B-LOC"]}])
        ['O', 'B-LOC', 'I-LOC', 'B-PER', 'I-PER']
    """
    types = sorted({t[2:] for r in records for t in r.get("tags", ()) if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def tag_label_records(pre: Any, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"label": name}, ...]`` in label-id order, for `Preprocessor.fit_labels`: the preprocessor's own
    `labels` when given (every tag of the data must be among them), else `tag_names` of the records.
    Sets `pre.label_names` to that order."""
    found = tag_names(normalize_tagged(r) for r in records)
    if pre.label_names is None:
        pre.label_names = found
    else:
        given = [str(n) for n in pre.label_names]
        missing = [t for t in found if t not in set(given)]
        if missing or "O" not in given:
            raise ValueError(f"Preprocessor(labels=...) lacks the tags {missing or ['O']} of the training data (its "
                             f"labels: {given[:12]}). Add them (every entity type needs 'B-' and 'I-', and 'O' is "
                             "required), or leave labels=None to take them from the data.")
        pre.label_names = given
    return [{"label": name} for name in pre.label_names]


def encode_tagged(pre: Any, records: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
    """`Preprocessor.encode` for token classification: `input_ids`, `attention_mask`, `word_ids` (the
    word of each token, -1 for special tokens) and, for records with tags, `labels` (`align_labels`).

    Words go to the fast tokenizer as they are (``is_split_into_words=True``; no cleaning, which
    would move word boundaries). Truncation to `max_length` drops the last words (counted in
    `pre.stats[split]`; with `strict=True` refused).
    """
    tok = pre.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"task='token_classification' aligns tags to sub-tokens with a fast tokenizer's word_ids(), "
                         f"and {type(tok).__name__} is not a fast tokenizer. Load it with "
                         "AutoTokenizer.from_pretrained(..., use_fast=True).")
    rows = [normalize_tagged(r) for r in records]
    stats = EncodeStats(examples=len(rows))
    features: list[dict[str, Any]] = []
    for start in range(0, len(rows), pre.batch_size):
        chunk = rows[start: start + pre.batch_size]
        try:
            enc = tok([r["tokens"] for r in chunk], is_split_into_words=True, truncation=True,
                      max_length=pre.max_length, return_attention_mask=False, return_token_type_ids=False)
        except (ValueError, AssertionError) as error:
            if "add_prefix_space" not in str(error):
                raise
            raise ValueError(f"{type(tok).__name__} needs add_prefix_space=True to read words "
                             "(is_split_into_words): load it with AutoTokenizer.from_pretrained(<model>, "
                             "add_prefix_space=True) and pass it as FineTuner(tokenizer=...).") from error
        for j, (ids, row) in enumerate(zip(enc["input_ids"], chunk)):
            word_ids = enc.word_ids(j)
            if enc.encodings[j].overflowing:
                pre._truncated(stats, start + j, split)
            feature: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids),
                                       "word_ids": [-1 if w is None else w for w in word_ids]}
            if "tags" in row:
                where = f" (record {start + j} of {split})"
                needed = set(row["tags"]) | ({continuation(t) for t in row["tags"]} if pre.label_all_subtokens
                                             else set())
                label2id = {t: pre.label_id(t, where) for t in needed}
                feature["labels"] = align_labels(word_ids, row["tags"], label2id, pre.label_all_subtokens)
            features.append(feature)
    pre.stats[split] = stats
    return features


def continuation(tag: str) -> str:
    """The tag of a word's later sub-tokens under ``label_all_subtokens=True``: ``B-X`` -> ``I-X``."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def align_labels(word_ids: Sequence[int | None], tags: Sequence[str], label2id: Mapping[str, int],
                 label_all_subtokens: bool = False) -> list[int]:
    """One label id per token from the word tags: the first sub-token of each word gets its tag's id,
    the later ones -100 (or, with `label_all_subtokens`, the id of `continuation(tag)`); special
    tokens (word id None) get -100."""
    labels: list[int] = []
    previous = None
    for w in word_ids:
        if w is None:
            labels.append(IGNORE_INDEX)
        elif w != previous:
            labels.append(label2id[tags[w]])
        else:
            labels.append(label2id[continuation(tags[w])] if label_all_subtokens else IGNORE_INDEX)
        previous = w
    return labels


def first_subtokens(word_ids: torch.Tensor) -> torch.Tensor:
    """Mask ``[B, T]`` of the first sub-token of each word, from collated ``word_ids`` (-1: no word)."""
    previous = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    return (word_ids >= 0) & (word_ids != previous)


def word_predictions(token_preds: torch.Tensor, word_ids: torch.Tensor, n_words: Sequence[int],
                     names: Sequence[str], fill: str = "O") -> list[list[str]]:
    """Word-level tags from token-level predicted ids ``[B, T]``: each word's tag is the prediction at its
    first sub-token; a word the model never saw (truncated away, or no sub-token) gets `fill`."""
    mask = first_subtokens(word_ids.cpu())
    preds, ids = token_preds.cpu(), word_ids.cpu()
    out = []
    for row in range(preds.shape[0]):
        tags = [fill] * n_words[row]
        for w, p in zip(ids[row][mask[row]].tolist(), preds[row][mask[row]].tolist()):
            if w < n_words[row]:
                tags[w] = names[p]
        out.append(tags)
    return out


__all__ = ["align_labels", "check_tagged_records", "continuation", "encode_tagged", "first_subtokens",
           "normalize_tagged", "span_problem", "spans_to_tags", "split_words", "tag_label_records", "tag_names",
           "tag_problem", "tagged_record_problem", "to_iob2", "word_predictions"]
