"""``Records``: a named list of plain dict records, the currency of the data pipeline.

Standard keys (see ``docs/internals.md``):

* classification: ``text`` (str) and ``label`` (int or str);
* generation: ``prompt`` (str, may be empty) and ``target`` (str), or only ``text`` for a causal LM;
* conversations (causal LM): ``messages``, a list of ``{"role", "content"}`` dicts (see ``data/chat.py``);
* token classification: ``tokens`` (a list of words) and ``tags`` (one per word), or ``text`` and
  ``spans`` (a list of ``{"start", "end", "label"}`` dicts; see ``data/token_labels.py``);
* ``group`` (optional, for grouped splits); any other column is kept as it is.

Example:
    >>> r = Records([{"text": "good", "label": 1}, {"text": "bad", "label": 0}], name="train")
    >>> r.columns, r.label_counts(), r[:1].name
    (['text', 'label'], {1: 1, 0: 1}, 'train')
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, SupportsIndex, overload

from .values import DataError, is_number

__all__ = ["Records", "STANDARD_KEYS", "build_records", "record_key", "record_text"]

logger = logging.getLogger(__name__)

STANDARD_KEYS: tuple[str, ...] = ("text", "label", "prompt", "target", "group", "messages", "tokens", "tags", "spans")
LIST_KEYS = ("tokens", "tags", "spans")  # token classification: a list per record (a JSON list in a CSV cell)


def _messages(record: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    messages = record.get("messages")
    if isinstance(messages, (list, tuple)) and all(isinstance(m, Mapping) for m in messages):
        return list(messages)
    return None


def record_text(record: Mapping[str, Any]) -> str:
    """The text a model reads for ``record``: ``text`` if present, else ``prompt`` + ``target``;
    for a conversation, its messages' contents, one per line.

    Used for length statistics; a causal-LM or classification record has ``text``.
    """
    messages = _messages(record)
    if messages is not None:
        return "\n".join(str(m.get("content", "")) for m in messages)
    if "text" not in record and isinstance(record.get("tokens"), (list, tuple)):  # token classification: words
        return " ".join(map(str, record["tokens"]))
    text = record.get("text")
    if text is not None:
        return str(text)
    prompt = record.get("prompt") or ""
    target = record.get("target") or ""
    return f"{prompt} {target}" if prompt and target else str(prompt or target)


def record_key(record: Mapping[str, Any]) -> str:
    """The string that identifies a record's content for duplicate and leakage checks.

    ``text`` if the record has one, else prompt and target joined by a unit separator (so that
    ``("a b", "c")`` and ``("a", "b c")`` differ). A conversation's key holds each message's role
    and content (role, unit separator, content; messages joined by a record separator), so the same
    words under other roles or in other turns make another key, and the normalized key (case,
    punctuation and whitespace folded, the separators included) reads ``"user hi assistant hello"``.

    >>> record_key({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    'user\\x1fHi\\x1eassistant\\x1fHello'
    """
    messages = _messages(record)
    if messages is not None:
        return "\x1e".join(f"{m.get('role', '')}\x1f{m.get('content', '')}" for m in messages)
    if "text" not in record and isinstance(record.get("tokens"), (list, tuple)):  # token classification: words
        return " ".join(map(str, record["tokens"]))
    text = record.get("text")
    if text is not None:
        return str(text)
    return f"{record.get('prompt') or ''}\x1f{record.get('target') or ''}"


class Records(list):  # type: ignore[type-arg]
    """A ``list`` of dict records with a ``name`` (``"train"``, ``"validation"``, a file stem...).

    Slicing keeps the type and the name. ``FineTuner.fit`` / ``evaluate`` and the ``Preprocessor``
    accept it wherever a list of dicts is accepted.
    """

    def __init__(self, records: Iterable[dict[str, Any]] = (), name: str = "records") -> None:
        super().__init__(records)
        self.name = name

    # -- list behaviour that should keep the type ---------------------------------------------
    @overload
    def __getitem__(self, index: SupportsIndex) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Records: ...

    def __getitem__(self, index: SupportsIndex | slice) -> dict[str, Any] | Records:
        if isinstance(index, slice):
            return Records(super().__getitem__(index), name=self.name)
        return super().__getitem__(index)

    def copy(self) -> Records:  # type: ignore[override]
        """A shallow copy of the list (the dicts are shared); see :meth:`deepcopy` for new dicts."""
        return Records(self, name=self.name)

    def deepcopy(self) -> Records:
        """A copy with new dicts (values shared), safe to modify record by record."""
        return Records((dict(r) for r in self), name=self.name)

    def __add__(self, other: Iterable[dict[str, Any]]) -> Records:  # type: ignore[override]
        return Records([*self, *other], name=self.name)

    def __repr__(self) -> str:
        return f"Records(name={self.name!r}, n={len(self)}, columns={self.columns})"

    def __reduce__(self) -> Any:
        return (Records, (list(self), self.name))

    # -- helpers ----------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """Keys present in any record, in first-seen order."""
        seen: dict[str, None] = {}
        for record in self:
            for key in record:
                seen.setdefault(key, None)
        return list(seen)

    def column(self, key: str, default: Any = None) -> list[Any]:
        """The values of ``key``, one per record (``default`` where missing)."""
        return [record.get(key, default) for record in self]

    @property
    def texts(self) -> list[str]:
        """The model-input text of each record (``text``, or ``prompt`` + ``target``)."""
        return [record_text(r) for r in self]

    @property
    def labels(self) -> list[Any]:
        """The ``label`` of each record (``None`` where missing)."""
        return self.column("label")

    def label_counts(self) -> dict[Any, int]:
        """Count of each label, most frequent first (empty when there are no labels)."""
        counts = Counter(label for r in self if r.get("label") is not None  # a multi-label list: each of its labels
                         for label in (r["label"] if isinstance(r["label"], (list, tuple)) else [r["label"]]))
        return dict(counts.most_common())

    def filter(self, predicate: Callable[[dict[str, Any]], bool]) -> Records:
        """A new ``Records`` with the records for which ``predicate`` is true."""
        return Records((r for r in self if predicate(r)), name=self.name)

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Records:
        """A new ``Records`` of ``fn(record)`` for each record."""
        return Records((fn(r) for r in self), name=self.name)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per record (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError('Records.to_pandas needs pandas: pip install "finetune_lib[pandas]"') from err
        return pd.DataFrame(list(self), columns=self.columns)


# --------------------------------------------------------------------------- column mapping


def _resolve_mapping(table: Any, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Which source column feeds each standard key; raises when a named column is missing."""

    columns = list(table.columns)
    given = {k: v for k, v in mapping.items() if v is not None}
    if table.headerless and not given:
        if len(columns) > 2:
            raise DataError(f"{table.source}: the file has no header and {len(columns)} columns; "
                            "say which is which by position, e.g. text=0, label=1")
        given = {"text": 0, "label": 1} if len(columns) == 2 else {"text": 0}
    resolved: dict[str, Any] = {}
    for key in STANDARD_KEYS:
        col = given.get(key, key if key in columns and key not in given.values() else None)
        if key in LIST_KEYS and key not in given and col is not None and not _holds_lists(table, col):
            col = None  # a column called e.g. "tokens" that holds counts is kept as it is, not read as words
        if col is None:
            continue
        if col not in columns:
            hint = ""
            if table.headerless and isinstance(col, str):
                hint = " The file has no header line: address columns by position, e.g. text=0, label=1."
            elif not table.headerless and isinstance(col, int):
                hint = " The file has a header line: address columns by name (or pass has_header=False)."
            raise DataError(f"{table.source}: column {col!r} (for {key}=) not found; available columns: "
                            f"{columns}.{hint}")
        resolved[key] = col
    if "text" not in resolved and "target" not in resolved and "messages" not in resolved and "tokens" not in resolved:
        raise DataError(f"{table.source}: no text column; pass text=<column> (or prompt= and target= for "
                        f"generation, messages= for conversations, tokens= and tags= for token classification); "
                        f"available columns: {columns}")
    return resolved


def _holds_lists(table: Any, column: Any) -> bool:
    """Whether the first non-empty value of `column` is a list (or a JSON list in a text cell)."""
    for row in table.rows:
        value = row.get(column)
        if value is not None and not (isinstance(value, str) and not value):
            return _as_list(value, "", column) is not None if isinstance(value, str) else \
                isinstance(value, (list, tuple)) or hasattr(value, "tolist")
    return False


def _as_list(value: Any, where: str, column: Any) -> list[Any] | None:
    """A token-classification list value (words, tags or spans) as a plain list; a JSON list in a text cell
    is parsed; None when missing or not a list (a text that is not JSON)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist") and not isinstance(value, list):  # numpy arrays from pandas / Parquet
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        return None
    return [dict(v) if isinstance(v, Mapping) else v for v in value]


def json_list(value: Any) -> Any:
    """A text holding a JSON list (``'["power", "display"]'``, as a CSV cell keeps it) as the list; any
    other value as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        listed = _as_list(value, "", None)
        return value if listed is None else listed
    return value


def _as_text(value: Any, where: str, column: Any) -> str | None:

    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):  # a bare NaN in JSONL: missing, as pandas' NaN is
        return None
    if isinstance(value, float) and math.isinf(value):
        raise DataError(f"{where}: column {column!r} holds {value!r}, not a text; fix or drop this row")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: column {column!r} holds a {type(value).__name__} ({value!r:.60}), expected text")


def _as_messages(value: Any, where: str, column: Any) -> list[dict[str, Any]] | None:
    """A conversation as a list of plain dicts (a JSON string, e.g. from a CSV cell, is parsed), or None
    when empty; raises a ``DataError`` naming the row and the problem when it is malformed."""
    from .chat import message_problem

    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: column {column!r} holds text that is not a JSON list of messages "
                            f"({err.msg}); give a list of {{'role': ..., 'content': ...}} objects") from err
    if hasattr(value, "tolist") and not isinstance(value, list):  # numpy arrays from pandas / Parquet
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        value = [dict(m) if isinstance(m, Mapping) else m for m in value]
    problem = message_problem(value, need_assistant=False)
    if problem:
        raise DataError(f"{where}: column {column!r}: {problem}; a conversation is a list of "
                        "{'role': 'system'|'user'|'assistant', 'content': <non-empty text>} objects")
    return value


def _label_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "int"
    return type(value).__name__


def _normalize_labels(records: list[dict[str, Any]], where: list[str], typed: bool, source: str,
                      column: Any) -> None:
    """Give all labels one type (numeric strings from CSV become numbers) or raise naming examples."""

    if not records:
        return
    labels = [r["label"] for r in records]
    if any(isinstance(label, (list, tuple)) for label in labels):  # multi-label: lists of names or ids
        _normalize_label_lists(records, where, column)
        return
    for i, label in enumerate(labels):
        if isinstance(label, (dict, set)):
            raise DataError(f"{where[i]}: column {column!r} holds a {type(label).__name__}; a label must be "
                            "one int or string, or a list of them (multi-label)")
    if not typed:
        labels = [v.strip() if isinstance(v, str) else v for v in labels]
        if all(isinstance(v, str) and is_number(v) for v in labels):
            numbers = [float(v) for v in labels]
            labels = [int(x) for x in numbers] if all(x.is_integer() for x in numbers) else numbers
        kinds = ["number" if isinstance(v, str) and is_number(v) else "text" for v in labels]
    else:
        kinds = [_label_kind(v) for v in labels]
        if set(kinds) == {"int"}:
            labels = [int(v) for v in labels]
        elif set(kinds) == {"int", "float"}:
            kinds = ["float"] * len(kinds)
    first: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        first.setdefault(kind, i)
    if len(first) > 1:
        examples = "; ".join(f"{k} at {where[i]}: {labels[i]!r}" for k, i in first.items())
        raise DataError(f"{source}: column {column!r} mixes label types ({examples}). Make all labels one "
                        "type (all int ids or all strings) before loading.")
    for record, label in zip(records, labels, strict=True):
        record["label"] = label


def _normalize_label_lists(records: list[dict[str, Any]], where: list[str], column: Any) -> None:
    """Multi-label data: every label a list of names or ids (a tuple becomes a list), or raise naming the row."""
    for i, record in enumerate(records):
        label = record["label"]
        if not isinstance(label, (list, tuple)) or not all(isinstance(v, (str, int)) for v in label):
            raise DataError(f"{where[i]}: column {column!r} holds {label!r}, but other rows hold lists of labels "
                            "(multi-label): make every label a list of names or ids, e.g. ['sports'] for one label")
        record["label"] = list(label)


def build_records(table: Any, mapping: Mapping[str, Any], *, name: str, strict: bool = False) -> Records:
    """Map a :class:`~finetune_lib.data.loaders.RawTable`'s columns onto the standard keys and validate.

    Rows with an empty text / target / label / group are dropped and counted in ``table.drops``
    (or raise a ``DataError`` naming the row and column when ``strict``). Other columns are kept
    (positional ones as ``column_<i>``).
    """

    resolved = _resolve_mapping(table, mapping)
    used = set(resolved.values())
    extra = [c for c in table.columns if c not in used]
    clash = [c for c in extra if c in resolved]
    if clash:
        logger.warning("%s: column(s) %s replaced by the mapped column(s) %s", table.source, clash,
                       {k: resolved[k] for k in clash})
    extra = [c for c in extra if c not in resolved]
    out: list[dict[str, Any]] = []
    where: list[str] = []
    # multi-label data from a CSV/TSV: a JSON list in each label cell is read as the list, here, so that
    # dedup and stratified splits see the labels and not their text
    label_lists = "label" in resolved and _holds_lists(table, resolved["label"])
    for row, loc in zip(table.rows, table.locations, strict=True):
        rec: dict[str, Any] = {}
        reason = None
        for key, col in resolved.items():
            value = row.get(col)
            missing = value is None or (isinstance(value, str) and not value.strip())
            if "tokens" in resolved and key in ("text", *LIST_KEYS) and missing:
                continue  # token classification: a row holds words and tags, or a text and its spans
            if key == "messages":
                value = _as_messages(value, loc, col)
                if value is None:
                    reason = "empty_messages"
            elif key in ("text", "prompt", "target"):
                value = _as_text(value, loc, col)
                if key == "prompt":
                    value = value or ""
                elif value is None or not value.strip():
                    reason = f"empty_{key}"
            elif key in LIST_KEYS:
                listed = _as_list(value, loc, col)
                if listed is None and value is not None:
                    raise DataError(f"{loc}: column {col!r} (for {key}=) holds {type(value).__name__} {value!r:.60}; "
                                    "token classification reads a list per record (a JSON list in a CSV cell)")
                value = listed
                if value is None or (key == "tokens" and not value):
                    reason = f"empty_{key}"
            elif value is None or (isinstance(value, str) and not value.strip()):
                reason = f"empty_{key}"
            elif key == "label" and label_lists:
                value = json_list(value)
            rec[key] = value
            if reason:
                if strict:
                    raise DataError(f"{loc}: empty value in column {col!r} (for {key}=); fill it or drop the "
                                    "row (strict=False drops and counts such rows)")
                table.drops.add(reason, loc)
                break
        if not reason and "tokens" in resolved and "tokens" not in rec and "text" not in rec:
            reason = "empty_tokens"
            if strict:
                raise DataError(f"{loc}: no words (tokens) and no text; fill them or drop the row")
            table.drops.add(reason, loc)
        if reason:
            continue
        if "tokens" in rec or "spans" in rec:  # token classification: one tag per word, spans inside the text
            from .token_labels import tagged_record_problem

            problem = tagged_record_problem(rec, need_tags="tags" in rec or "spans" in rec)
            if problem:
                raise DataError(f"{loc}: {problem}")
        for col in extra:
            if col in row:
                rec[f"column_{col}" if isinstance(col, int) else col] = row[col]
        out.append(rec)
        where.append(loc)
    if "label" in resolved:
        _normalize_labels(out, where, table.typed, table.source, resolved["label"])
    table.drops.log(table.source)
    if not out:
        raise DataError(f"{table.source}: no records left (dropped: {dict(table.drops.counts)})")
    return Records(out, name=name)
