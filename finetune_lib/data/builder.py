"""``DatasetBuilder``: load records, validate them, deduplicate, split, check leakage, report.

Example:
    >>> splits = (DatasetBuilder.from_file("reviews.tsv", text=0, label=1)   # doctest: +SKIP
    ...           .deduplicate()
    ...           .split(validation=0.1, test=0.1, stratify=True, seed=0))
    >>> print(splits.report())                                                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import dedup as _dedup
from .loaders import DataError, read_file, table_from_dataframe, table_from_hf, table_from_records
from .records import Records, build_records
from .report import DataReport, build_report

logger = logging.getLogger(__name__)

__all__ = ["DatasetBuilder", "Splits"]

SPLIT_NAMES = ("train", "validation", "test")
Column = str | int | None


@dataclass
class Splits:
    """Train / validation / test ``Records`` (validation and test may be empty)."""

    train: Records
    validation: Records = field(default_factory=lambda: Records(name="validation"))
    test: Records = field(default_factory=lambda: Records(name="test"))
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped while loading (and by ``remove_leakage``), per reason."""
    dedup_counts: dict[str, int] = field(default_factory=dict)

    def items(self) -> list[tuple[str, Records]]:
        """``[("train", ...), ("validation", ...), ("test", ...)]``."""
        return [(name, getattr(self, name)) for name in SPLIT_NAMES]

    def __getitem__(self, name: str) -> Records:
        if name not in SPLIT_NAMES:
            raise KeyError(f"no split {name!r}; splits: {list(SPLIT_NAMES)}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(recs) for name, recs in self.items()}

    def leakage(self, near: bool = False, threshold: float = 0.9) -> _dedup.LeakageReport:
        """Exact and normalized (and with ``near``, near) duplicates shared between splits.

        ``report.pairs["train/test"]["exact"]`` counts the test records whose text is in train.
        """
        return _dedup.find_leakage(dict(self.items()), near=near, threshold=threshold)

    def remove_leakage(self, near: bool = False, threshold: float = 0.9) -> Splits:
        """New ``Splits`` without the validation / test records that duplicate an earlier split.

        Train is never changed; a test record duplicating validation is removed from test.
        """
        found = _dedup.leaked_indices(dict(self.items()), near=near, threshold=threshold)
        drop: dict[str, set[int]] = {"validation": set(), "test": set()}
        for (_, late), leaked in found.items():
            drop[late].update(leaked)
        dropped = dict(self.dropped)
        parts = {}
        for name in ("validation", "test"):
            recs = getattr(self, name)
            parts[name] = Records((r for i, r in enumerate(recs) if i not in drop[name]), name=name)
            if drop[name]:
                dropped[f"leakage_{name}"] = dropped.get(f"leakage_{name}", 0) + len(drop[name])
                logger.warning("remove_leakage: dropped %d %s record(s) duplicating an earlier split",
                               len(drop[name]), name)
        return Splits(self.train, parts["validation"], parts["test"], dropped, dict(self.dedup_counts))

    def report(self, tokenizer: Any = None, max_length: int | None = None) -> DataReport:
        """A :class:`~finetune_lib.data.report.DataReport` over the three splits, leakage included."""
        parts = {name: recs for name, recs in self.items() if name == "train" or len(recs)}
        return build_report(parts, tokenizer, max_length, self.dropped, self.dedup_counts,
                            _dedup.find_leakage(parts).to_dict())

    def __repr__(self) -> str:
        return f"Splits({', '.join(f'{k}={v}' for k, v in self.sizes.items())})"


class DatasetBuilder:
    """Loads and checks a data set, then splits it. Iterable; ``len()`` gives the record count.

    Attributes:
        records: the current :class:`Records`.
        dropped: rows dropped while loading, per reason (blank lines, stray header, empty values...).
        dedup_counts: records removed by :meth:`deduplicate`, per stage, and label conflicts.
    """

    def __init__(self, records: Iterable[dict[str, Any]] = (), name: str = "data",
                 dropped: Mapping[str, int] | None = None) -> None:
        self.records = Records(records, name=name)
        self.dropped: dict[str, int] = dict(dropped or {})
        self.dedup_counts: dict[str, int] = {}

    # -- sources ------------------------------------------------------------------------------
    @classmethod
    def _from_table(cls, table: Any, mapping: dict[str, Column], name: str, strict: bool) -> DatasetBuilder:
        records = build_records(table, mapping, name=name, strict=strict)
        return cls(records, name=name, dropped=dict(table.drops.counts))

    @classmethod
    def from_file(cls, path: str | Path, text: Column = None, label: Column = None, prompt: Column = None,
                  target: Column = None, group: Column = None, format: str | None = None,
                  encoding: str = "utf-8", delimiter: str | None = None, has_header: bool | None = None,
                  blocks: bool = False, strict: bool = False, messages: Column = None,
                  tokens: Column = None, tags: Column = None, spans: Column = None) -> DatasetBuilder:
        """Load a JSONL, JSON, CSV, TSV, text or Parquet file (by extension, or ``format=``).

        Args:
            path: the file; ``*.gz`` is decompressed.
            text, label, prompt, target, group: the source column for each standard key, by name,
                or by position (0, 1, ...) in a delimited file without a header. A column already
                called ``text``/``label``/... needs no argument.
            messages: the column of conversations (causal LM): a list of ``{"role", "content"}``
                objects per row (a JSON array in JSONL; a JSON string in a CSV cell is parsed). A
                column called ``messages`` needs no argument. Malformed conversations raise a
                ``DataError`` naming the row; empty ones are dropped and counted.
            format: ``"jsonl"``, ``"json"``, ``"csv"``, ``"tsv"``, ``"txt"`` or ``"parquet"``. A ``.txt``
                file whose lines mostly contain tabs is read as TSV unless ``format="txt"`` is given.
            encoding: the file's encoding; a UTF-8 byte-order mark is skipped.
            delimiter: field separator of a delimited file (default ``,`` for CSV, tab otherwise).
            has_header: whether a delimited file starts with a header line; by default, yes when
                columns are given by name, no when given by position, else guessed.
            blocks: for text files, one record per blank-line-separated block instead of per line.
            strict: raise on a row with an empty value instead of dropping and counting it.
            tokens, tags, spans: token classification columns: the words of each row and their tags
                (one per word, e.g. ``"B-PER"``), or the character spans of the ``text``
                (``{"start", "end", "label"}`` dicts). A column with one of these names that holds
                lists (JSON lists in a CSV cell) needs no argument. Tags of another length than the
                words, tags without an entity type, and spans out of range or overlapping raise a
                ``DataError`` naming the row (`finetune_lib.data.token_labels`).

        Leading lines that do not fit the file's field count (a stray title or header) and blank
        lines are dropped and counted in :attr:`dropped`.

        Example:
            >>> b = DatasetBuilder.from_file("amazon_cells_labelled.txt", text=0, label=1)  # doctest: +SKIP
            >>> b.dropped                                                                   # doctest: +SKIP
            {'stray_header': 1}
        """
        mapping = {"text": text, "label": label, "prompt": prompt, "target": target, "group": group,
                   "messages": messages, "tokens": tokens, "tags": tags, "spans": spans}
        given = [v for v in mapping.values() if v is not None]
        table = read_file(path, format=format, encoding=encoding, delimiter=delimiter, has_header=has_header,
                          blocks=blocks, by_index=any(isinstance(v, int) for v in given),
                          by_name=any(isinstance(v, str) for v in given))
        name = Path(path).name.split(".")[0] or "data"
        return cls._from_table(table, mapping, name, strict)

    @classmethod
    def from_pandas(cls, df: Any, text: Column = None, label: Column = None, prompt: Column = None,
                    target: Column = None, group: Column = None, name: str = "dataframe",
                    strict: bool = False, messages: Column = None,
                    tokens: Column = None, tags: Column = None, spans: Column = None) -> DatasetBuilder:
        """Load a pandas DataFrame; columns map as in :meth:`from_file` (NaN counts as empty)."""
        mapping = {"text": text, "label": label, "prompt": prompt, "target": target, "group": group,
                   "messages": messages, "tokens": tokens, "tags": tags, "spans": spans}
        return cls._from_table(table_from_dataframe(df), mapping, name, strict)

    @classmethod
    def from_hf(cls, dataset: Any, text: Column = None, label: Column = None, prompt: Column = None,
                target: Column = None, group: Column = None, name: str | None = None,
                strict: bool = False, messages: Column = None,
                tokens: Column = None, tags: Column = None, spans: Column = None) -> DatasetBuilder:
        """Load a Hugging Face ``datasets.Dataset`` (one split; ``datasets`` itself is not imported).

        Columns map as in :meth:`from_file`. ``ClassLabel`` columns (and ``Sequence(ClassLabel)``) come
        in as their names, not their ids, so the trained model predicts names; rows labeled -1
        (``datasets``' "no label") count as empty labels. Label ids then follow the names' sorted
        order; to keep the data set's own order pass its names to the Preprocessor.

        Example:
            >>> ds = datasets.load_dataset("imdb", split="train")                      # doctest: +SKIP
            >>> b = DatasetBuilder.from_hf(ds)                 # labels "neg" / "pos"  # doctest: +SKIP
            >>> pre = Preprocessor(labels=ds.features["label"].names)  # id order of the data set  # doctest: +SKIP
        """
        info = getattr(dataset, "info", None)
        name = name or getattr(info, "dataset_name", None) or "hf_dataset"
        mapping = {"text": text, "label": label, "prompt": prompt, "target": target, "group": group,
                   "messages": messages, "tokens": tokens, "tags": tags, "spans": spans}
        return cls._from_table(table_from_hf(dataset), mapping, name, strict)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], text: Column = None, label: Column = None,
                     prompt: Column = None, target: Column = None, group: Column = None, name: str = "records",
                     strict: bool = False, messages: Column = None,
                     tokens: Column = None, tags: Column = None, spans: Column = None) -> DatasetBuilder:
        """Load a list of dicts; columns map as in :meth:`from_file` (conversations under ``messages``).

        Example:
            >>> chats = [{"messages": [{"role": "user", "content": "Hi"},
            ...                        {"role": "assistant", "content": "Hello! How can I help?"}]}]
            >>> DatasetBuilder.from_records(chats).columns
            ['messages']
        """
        mapping = {"text": text, "label": label, "prompt": prompt, "target": target, "group": group,
                   "messages": messages, "tokens": tokens, "tags": tags, "spans": spans}
        return cls._from_table(table_from_records(records), mapping, name, strict)

    # -- list-like ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]

    @property
    def name(self) -> str:
        return self.records.name

    @property
    def columns(self) -> list[str]:
        return self.records.columns

    def __repr__(self) -> str:
        return f"DatasetBuilder(name={self.name!r}, n={len(self)}, columns={self.columns}, dropped={self.dropped})"

    # -- transformations ----------------------------------------------------------------------
    def filter(self, predicate: Callable[[dict[str, Any]], bool], reason: str = "filtered") -> DatasetBuilder:
        """Keep the records for which ``predicate`` is true; the others count in ``dropped[reason]``."""
        kept = self.records.filter(predicate)
        if len(kept) < len(self.records):
            self.dropped[reason] = self.dropped.get(reason, 0) + len(self.records) - len(kept)
            logger.info("%s: filter dropped %d record(s)", self.name, len(self.records) - len(kept))
        self.records = kept
        return self

    def deduplicate(self, normalized: bool = True, near: bool = False, threshold: float = 0.9) -> DatasetBuilder:
        """Remove duplicates (exact; normalized for case, whitespace and punctuation; optionally near).

        The first occurrence is kept, with the majority label of its duplicates; conflicting labels
        are counted. Counts add up in :attr:`dedup_counts` (``exact``, ``normalized``, ``near``,
        ``label_conflicts``). Returns ``self``.
        """
        kept, counts = _dedup.deduplicate(self.records, normalized=normalized, near=near, threshold=threshold)
        for key, value in counts.items():
            self.dedup_counts[key] = self.dedup_counts.get(key, 0) + value
        removed = len(self.records) - len(kept)
        if removed or counts["label_conflicts"]:
            logger.info("%s: deduplicate removed %d record(s) %s", self.name, removed, counts)
        self.records = Records(kept, name=self.name)
        return self

    def to_messages(self, system: str | None = None) -> DatasetBuilder:
        """Turn prompt/target records into conversations: ``{"messages": [system?, user, assistant]}``.

        The ``prompt`` becomes the user turn and the ``target`` the assistant turn, after an optional
        ``system`` prompt; ``prompt`` and ``target`` are replaced, other columns kept. Records that are
        conversations already are left as they are. Returns ``self``.

        Raises:
            DataError: a record has no prompt (a conversation needs a user turn) or no target.

        Example:
            >>> b = DatasetBuilder.from_records([{"prompt": "Opening hours?", "target": "9 to 5."}])
            >>> b.to_messages(system="You are Acme's support assistant.")[0]["messages"][1]
            {'role': 'user', 'content': 'Opening hours?'}
        """
        out = []
        for i, r in enumerate(self.records):
            if "messages" in r:
                out.append(r)
                continue
            prompt, target = r.get("prompt"), r.get("target")
            for key, value in (("prompt", prompt), ("target", target)):
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{self.name}: record {i} has no {key} ({value!r}); to_messages() makes the "
                                    "prompt the user turn and the target the assistant turn: fill or drop it "
                                    "(e.g. .filter(lambda r: r.get('prompt')))")
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}]
            out.append({"messages": messages, **{k: v for k, v in r.items() if k not in ("prompt", "target")}})
        self.records = Records(out, name=self.name)
        return self

    # -- splitting ----------------------------------------------------------------------------
    def split(self, validation: float | int = 0.1, test: float | int = 0.1, stratify: bool = False,
              group: str | None = None, seed: int = 0) -> Splits:
        """Split into train / validation / test.

        Args:
            validation, test: a ratio in [0, 1) of the records (rounded up, as scikit-learn does)
                or a count (int). 0 gives an empty split.
            stratify: keep the label proportions in every split (each class within one example
                of its exact share). With one held-out split this is scikit-learn's
                ``train_test_split(..., stratify=labels, random_state=seed)``. Multi-label data
                (labels are lists) is split by iterative stratification
                (`finetune_lib.data.multilabel_split`): each label keeps its share, and a label with an
                example per split lands in every split. Regression targets (non-integral numbers) are
                refused: split them with stratify=False.
                Token classification records (one tag per word) have no label to stratify on:
                refused, unless each record is given a ``label`` to stratify on (training ignores it).
            group: a record key (e.g. ``"group"``); all records of a group land in one split.
                Sizes then follow whole groups and are approximate.
            seed: the same seed gives the same splits.

        Raises:
            DataError: a requested split would be empty, or nothing would be left to train on.
        """
        n = len(self.records)
        if n == 0:
            dropped = sum(self.dropped.values()) + sum(v for k, v in self.dedup_counts.items() if k != "label_conflicts")
            reasons = ", ".join(f"{k}: {v}" for k, v in {**self.dropped, **self.dedup_counts}.items() if v) or "none"
            raise DataError(f"nothing left to split: 0 records kept of {dropped} read (dropped: {reasons}). Check the "
                            "column mapping and loosen the filters before splitting.")
        sizes = {"validation": _count(validation, n, "validation"), "test": _count(test, n, "test")}
        if sizes["validation"] + sizes["test"] >= n:
            raise DataError(f"validation={validation!r} and test={test!r} leave no training records out of {n}")
        if stratify and group:
            raise ValueError("stratify and group cannot be combined; split by group (no leakage between "
                             "groups) or stratify by label")
        index: dict[str, Any]
        if group:
            index = _grouped(self.records, group, sizes, seed)
        elif stratify:
            index = _stratified(self.records, sizes, seed)
        else:
            perm = np.random.default_rng(seed).permutation(n)
            index = {"test": perm[: sizes["test"]], "validation": perm[sizes["test"] : sizes["test"] + sizes["validation"]],
                     "train": perm[sizes["test"] + sizes["validation"] :]}
        parts = {name: Records((self.records[i] for i in sorted(index[name])), name=name) for name in SPLIT_NAMES}
        for name in SPLIT_NAMES:
            if not parts[name] and (name == "train" or sizes[name]):
                raise DataError(f"the {name} split would be empty; ask for more, or use a count (e.g. {name}=1)")
        return Splits(parts["train"], parts["validation"], parts["test"], dict(self.dropped), dict(self.dedup_counts))

    def report(self, tokenizer: Any = None, max_length: int | None = None) -> DataReport:
        """A :class:`~finetune_lib.data.report.DataReport` of the whole data set (before splitting)."""
        return build_report({self.name: self.records}, tokenizer, max_length, self.dropped, self.dedup_counts)


# --------------------------------------------------------------------------- split helpers


def _count(value: float | int, n: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a ratio (float) or a count (int), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}={value} must be >= 0")
        return value
    if not 0 <= value < 1:
        raise ValueError(f"{name}={value} must be a ratio in [0, 1) or a count (int)")
    count = math.ceil(value * n - 1e-9)
    if value > 0 and count == 0:
        raise DataError(f"{name}={value} of {n} records gives an empty split; pass a count, e.g. {name}=1")
    return count


def _labels(records: Sequence[Mapping[str, Any]]) -> list[Any]:
    labels = [r.get("label") for r in records]
    if any(label is None for label in labels) and any("tags" in r or "spans" in r for r in records):
        raise DataError("stratify=True keeps each label's share, and token classification records have a tag per "
                        "word, not one label per record: split with stratify=False, or give each record a 'label' "
                        "to stratify on (e.g. its most frequent entity type; training ignores it)")
    if any(label is None for label in labels):
        raise DataError("stratify=True needs a label in every record; load with label=<column>")
    return labels


def _stratified(records: Sequence[Mapping[str, Any]], sizes: Mapping[str, int], seed: int) -> dict[str, Any]:
    labels = _labels(records)
    n = len(records)
    if any(isinstance(v, (list, tuple)) for v in labels):  # multi-label: keep each label's share
        from .multilabel_split import iterative_stratification

        if not all(isinstance(v, (list, tuple)) for v in labels):
            raise DataError("stratify=True: some labels are lists (multi-label) and some are not; make every label "
                            "a list of label names, e.g. ['sports'] for a single label")
        parts = iterative_stratification(labels, [sizes["test"], sizes["validation"],
                                                  n - sizes["test"] - sizes["validation"]], seed)
        return dict(zip(("test", "validation", "train"), parts, strict=True))
    if any(isinstance(v, float) and not v.is_integer() for v in labels):
        raise DataError("stratify=True keeps the share of each class, and these labels are numbers (regression "
                        "targets such as 3.7), not classes: split with stratify=False, or bin the targets into a "
                        "column of classes, stratify on it and keep the number in another column")
    held = [name for name in ("validation", "test") if sizes[name]]
    if len(held) == 1:  # the common case, identical to scikit-learn's stratified train_test_split
        from sklearn.model_selection import train_test_split

        try:
            train, other = train_test_split(np.arange(n), test_size=sizes[held[0]], stratify=labels,
                                            random_state=seed)
        except ValueError as err:
            raise DataError(f"cannot stratify: {err}") from err
        return {"train": train, held[0]: other, **{k: [] for k in ("validation", "test") if k not in held}}
    classes = list(dict.fromkeys(labels))
    members: dict[Any, list[int]] = {c: [] for c in classes}
    for i, label in enumerate(labels):
        members[label].append(i)
    totals = [sizes["test"], sizes["validation"], n - sizes["test"] - sizes["validation"]]
    rng = np.random.default_rng(seed)
    table = _round_table(np.array([len(members[c]) for c in classes]), np.array(totals), rng)
    index: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    for c, row in zip(classes, table, strict=True):
        idx = rng.permutation(members[c])
        index["test"] += idx[: row[0]].tolist()
        index["validation"] += idx[row[0] : row[0] + row[1]].tolist()
        index["train"] += idx[row[0] + row[1] :].tolist()
    return index


def _round_table(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round ``rows ⊗ cols / n`` entry-wise up or down keeping every row and column sum (a max flow)."""
    ideal = np.outer(rows, cols) / rows.sum()
    table = np.floor(ideal + 1e-9).astype(int)
    can_round_up = (ideal - table) > 1e-9
    row_need = rows - table.sum(1)
    col_need = cols - table.sum(0)
    # augmenting paths: source -> class (row_need) -> split (one unit if it may round up) -> sink (col_need)
    flow = np.zeros_like(table)
    row_flow, col_flow = np.zeros(len(rows), dtype=int), np.zeros(len(cols), dtype=int)
    order = rng.permutation(len(rows))
    for _ in range(int(row_need.sum())):
        parent: dict[tuple[str, int], tuple[str, int] | None] = {}
        queue = [("r", int(r)) for r in order if row_need[r] > row_flow[r]]
        for start in queue:
            parent[start] = None
        end = None
        while queue and end is None:
            kind, x = queue.pop(0)
            if kind == "r":
                for s in range(len(cols)):
                    if can_round_up[x, s] and not flow[x, s] and ("c", s) not in parent:
                        parent[("c", s)] = (kind, x)
                        if col_need[s] > col_flow[s]:
                            end = ("c", s)
                            break
                        queue.append(("c", s))
            else:
                for r in np.flatnonzero(flow[:, x]):
                    if ("r", int(r)) not in parent:
                        parent[("r", int(r))] = (kind, x)
                        queue.append(("r", int(r)))
        if end is None:
            break
        col_flow[end[1]] += 1
        node: tuple[str, int] = end
        while (prev := parent[node]) is not None:
            if prev[0] == "r":
                flow[prev[1], node[1]] += 1
            else:
                flow[node[1], prev[1]] -= 1
            node = prev
        row_flow[node[1]] += 1
    return table + flow


def _grouped(records: Sequence[Mapping[str, Any]], key: str, sizes: Mapping[str, int], seed: int
             ) -> dict[str, list[int]]:
    members: dict[Any, list[int]] = {}
    for i, record in enumerate(records):
        if record.get(key) is None:
            raise DataError(f"group={key!r}: record {i} has no {key!r}; load with group=<column>")
        members.setdefault(record[key], []).append(i)
    groups = list(members)
    rng = np.random.default_rng(seed)
    index: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    assigned: dict[str, list[Any]] = {"test": [], "validation": [], "train": []}
    for g in (groups[i] for i in rng.permutation(len(groups))):
        size = len(members[g])
        for name in ("test", "validation"):
            have, want = len(index[name]), sizes[name]
            if have < want and have + size - want <= want - have:  # taking it gets closer to the target
                break
        else:
            name = "train"
        index[name] += members[g]
        assigned[name].append(g)
    for name in ("test", "validation"):  # a requested split that no group fitted: take the smallest one
        if sizes[name] and not index[name] and len(assigned["train"]) > 1:
            g = min(assigned["train"], key=lambda x: len(members[x]))
            assigned["train"].remove(g)
            index["train"] = [i for i in index["train"] if i not in set(members[g])]
            index[name] = members[g]
    return index
