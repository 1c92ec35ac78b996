"""``DatasetBuilder``: load records, validate them, deduplicate, split, check leakage, report.

Example:
    >>> splits = (DatasetBuilder.from_file("reviews.tsv", text=0, label=1)   # doctest: +SKIP
    ...           .deduplicate()
    ...           .split(validation=0.1, test=0.1, stratify=True, seed=0))
    >>> print(splits.report())                                                # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import arrow_ops as _arrow_ops
from . import dedup as _dedup
from .arrow_records import ArrowRecords
from .arrow_source import arrow_records_from, is_hf_dataset, load_hf_source, require_datasets_for
from .loaders import DataError, read_file, table_from_dataframe, table_from_hf, table_from_records
from .records import Records, build_records
from .report import DataReport, build_report
from .splitting import count, group_members, group_values, grouped_index, label_values, stratified_index, take
from .splitting import round_table as _round_table  # noqa: F401  (kept importable from here)
from .streaming import STREAM_SPLIT_HINT, StreamingRecords, load_stream

logger = logging.getLogger(__name__)

__all__ = ["DatasetBuilder", "Splits"]

SPLIT_NAMES = ("train", "validation", "test")
Column = str | int | None


@dataclass
class Splits:
    """Train / validation / test ``Records`` (validation and test may be empty); ``ArrowRecords`` for Arrow data."""

    train: Records | ArrowRecords
    validation: Records | ArrowRecords = field(default_factory=lambda: Records(name="validation"))
    test: Records | ArrowRecords = field(default_factory=lambda: Records(name="test"))
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped while loading (and by ``remove_leakage``), per reason."""
    dedup_counts: dict[str, int] = field(default_factory=dict)

    def items(self) -> list[tuple[str, Records | ArrowRecords]]:
        """``[("train", ...), ("validation", ...), ("test", ...)]``."""
        return [(name, getattr(self, name)) for name in SPLIT_NAMES]

    def __getitem__(self, name: str) -> Records | ArrowRecords:
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
        return _arrow_ops.find_leakage(dict(self.items()), near=near, threshold=threshold)

    def remove_leakage(self, near: bool = False, threshold: float = 0.9) -> Splits:
        """New ``Splits`` without the validation / test records that duplicate an earlier split.

        Train is never changed; a test record duplicating validation is removed from test.
        """
        found = _arrow_ops.leaked_indices(dict(self.items()), near=near, threshold=threshold)
        drop: dict[str, set[int]] = {"validation": set(), "test": set()}
        for (_, late), leaked in found.items():
            drop[late].update(leaked)
        dropped = dict(self.dropped)
        parts = {}
        for name in ("validation", "test"):
            recs = getattr(self, name)
            parts[name] = take(recs, np.setdiff1d(np.arange(len(recs)), sorted(drop[name])), name)
            if drop[name]:
                dropped[f"leakage_{name}"] = dropped.get(f"leakage_{name}", 0) + len(drop[name])
                logger.warning("remove_leakage: dropped %d %s record(s) duplicating an earlier split",
                               len(drop[name]), name)
        return Splits(self.train, parts["validation"], parts["test"], dropped, dict(self.dedup_counts))

    def report(self, tokenizer: Any = None, max_length: int | None = None) -> DataReport:
        """A :class:`~finetune_lib.data.report.DataReport` over the three splits, leakage included."""
        parts = {name: recs for name, recs in self.items() if name == "train" or len(recs)}
        return build_report(parts, tokenizer, max_length, self.dropped, self.dedup_counts,
                            _arrow_ops.find_leakage(parts).to_dict())

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
        self.records: Records | ArrowRecords | StreamingRecords = (
            records if isinstance(records, (ArrowRecords, StreamingRecords)) else Records(records, name=name))
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
                strict: bool = False, messages: Column = None, tokens: Column = None, tags: Column = None,
                spans: Column = None, split: str | None = None, streaming: bool = False,
                backend: str | None = None) -> DatasetBuilder:
        """Load Hugging Face data: a ``Dataset``, a ``DatasetDict`` (with ``split=``), a ``save_to_disk``
        folder, data files (``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet``/``.txt``, a glob or a list) or a
        hub id with ``split=``.

        The records stay in Arrow (:class:`~finetune_lib.data.arrow_records.ArrowRecords`, memory-mapped,
        checked column-wise); :meth:`deduplicate`, :meth:`split` and the leakage check then work on
        columns too, with the same results as for a list. Conversations and token classification
        columns, and duck-typed datasets, take the list path (``backend="list"`` forces it).

        Columns map as in :meth:`from_file`. ``ClassLabel`` columns (and ``Sequence(ClassLabel)``) come
        in as their names, not their ids, so the trained model predicts names; rows labeled -1
        (``datasets``' "no label") count as empty labels. Label ids then follow the names' sorted
        order; to keep the data set's own order pass its names to the Preprocessor.

        Args:
            split: the split to load from a ``DatasetDict``, a folder of splits or the hub.
            streaming: read the data as training goes (:class:`~finetune_lib.data.streaming.StreamingRecords`),
                for corpora larger than memory or disk; training then needs ``max_steps``. A stream cannot be
                split, deduplicated or reported whole: hold out its first rows with :meth:`take` / :meth:`skip`,
                or load a separate validation split without streaming.
            backend: ``"arrow"``, ``"list"`` or None (Arrow when it can). Arrow needs
                ``pip install 'finetune_lib[hf]'``.

        Example:
            >>> ds = datasets.load_dataset("imdb", split="train")                      # doctest: +SKIP
            >>> b = DatasetBuilder.from_hf(ds)                 # labels "neg" / "pos"  # doctest: +SKIP
            >>> b = DatasetBuilder.from_hf("data/reviews.parquet", text="review")      # doctest: +SKIP
            >>> pre = Preprocessor(labels=ds.features["label"].names)  # id order of the data set  # doctest: +SKIP
        """
        if backend not in (None, "arrow", "list"):
            raise ValueError(f"backend={backend!r}: use 'arrow', 'list' or None (Arrow when it can)")
        require_datasets_for(backend)
        mapping = {"text": text, "label": label, "prompt": prompt, "target": target, "group": group,
                   "messages": messages, "tokens": tokens, "tags": tags, "spans": spans}
        if streaming or type(dataset).__name__ in ("IterableDataset", "IterableDatasetDict"):
            stream = load_stream(dataset, split=split)
            info_name = getattr(getattr(stream, "info", None), "dataset_name", None)
            return cls(StreamingRecords(stream, **mapping, name=name or info_name or "hf_stream", strict=strict))
        dataset = load_hf_source(dataset, split=split, streaming=streaming)
        info = getattr(dataset, "info", None)
        name = name or getattr(info, "dataset_name", None) or "hf_dataset"
        if backend != "list" and is_hf_dataset(dataset):
            loaded = arrow_records_from(mapping, dataset, name, strict)
            if loaded is not None:
                return cls(loaded[0], name=name, dropped=loaded[1])
            if backend == "arrow":
                raise DataError("backend='arrow' maps text, label, prompt, target and group columns; conversations "
                                "and token classification load with backend='list'")
        elif backend == "arrow":
            raise TypeError(f"backend='arrow' needs a datasets.Dataset, got {type(dataset).__name__}")
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
        if isinstance(self.records, StreamingRecords):
            raise TypeError(f"{self.name} is a stream: its length is unknown until it has been read")
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
        if isinstance(self.records, StreamingRecords):
            return f"DatasetBuilder(name={self.name!r}, streaming, dropped={self.records.dropped})"
        return f"DatasetBuilder(name={self.name!r}, n={len(self)}, columns={self.columns}, dropped={self.dropped})"

    @property
    def streaming(self) -> bool:
        """True when the records are a stream (``from_hf(..., streaming=True)``)."""
        return isinstance(self.records, StreamingRecords)

    def take(self, n: int) -> DatasetBuilder:
        """A stream's first `n` rows (the kept ones), read now into an in-memory builder: e.g. a
        validation split held out of a stream, with :meth:`skip` giving the rest to train on.

        Example:
            >>> stream = DatasetBuilder.from_hf("big.jsonl", text="review", streaming=True)  # doctest: +SKIP
            >>> validation, train = stream.take(1000), stream.skip(1000)                     # doctest: +SKIP
        """
        if not isinstance(self.records, StreamingRecords):
            return DatasetBuilder(take(self.records, np.arange(min(n, len(self.records))), self.name),
                                  name=self.name, dropped=self.dropped)
        return DatasetBuilder(self.records.take(n), name=self.name)

    def skip(self, n: int) -> DatasetBuilder:
        """A stream without its first `n` rows (see :meth:`take`); for in-memory data, the records after the first n."""
        if not isinstance(self.records, StreamingRecords):
            rest = np.arange(min(n, len(self.records)), len(self.records))
            return DatasetBuilder(take(self.records, rest, self.name), name=self.name, dropped=self.dropped)
        return DatasetBuilder(self.records.skip(n), name=self.name)

    def _refuse_stream(self, what: str, do: str) -> None:
        if isinstance(self.records, StreamingRecords):
            raise DataError(f"{self.name}: " + STREAM_SPLIT_HINT.format(what=what, do=do))

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
        self._refuse_stream("deduplicated", "deduplicate")
        dedup = _arrow_ops.deduplicate if isinstance(self.records, ArrowRecords) else _dedup.deduplicate
        kept, counts = dedup(self.records, normalized=normalized, near=near, threshold=threshold)  # type: ignore[operator]
        for key, value in counts.items():
            self.dedup_counts[key] = self.dedup_counts.get(key, 0) + value
        removed = len(self.records) - len(kept)
        if removed or counts["label_conflicts"]:
            logger.info("%s: deduplicate removed %d record(s) %s", self.name, removed, counts)
        self.records = kept if isinstance(kept, ArrowRecords) else Records(kept, name=self.name)
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
            DataError: a requested split would be empty, nothing would be left to train on, or the records
                are a stream (hold out its first rows with :meth:`take` and :meth:`skip` instead).
        """
        self._refuse_stream("stratified" if stratify else "grouped" if group else "split at random",
                            "split")
        n = len(self.records)
        if n == 0:
            dropped = sum(self.dropped.values()) + sum(v for k, v in self.dedup_counts.items() if k != "label_conflicts")
            reasons = ", ".join(f"{k}: {v}" for k, v in {**self.dropped, **self.dedup_counts}.items() if v) or "none"
            raise DataError(f"nothing left to split: 0 records kept of {dropped} read (dropped: {reasons}). Check the "
                            "column mapping and loosen the filters before splitting.")
        sizes = {"validation": count(validation, n, "validation"), "test": count(test, n, "test")}
        if sizes["validation"] + sizes["test"] >= n:
            raise DataError(f"validation={validation!r} and test={test!r} leave no training records out of {n}")
        if stratify and group:
            raise ValueError("stratify and group cannot be combined; split by group (no leakage between "
                             "groups) or stratify by label")
        index: dict[str, Any]
        if group:
            index = grouped_index(group_members(group_values(self.records, group)), sizes, seed)
        elif stratify:
            index = stratified_index(label_values(self.records), sizes, seed)
        else:
            perm = np.random.default_rng(seed).permutation(n)
            index = {"test": perm[: sizes["test"]], "validation": perm[sizes["test"] : sizes["test"] + sizes["validation"]],
                     "train": perm[sizes["test"] + sizes["validation"] :]}
        parts = {name: take(self.records, index[name], name) for name in SPLIT_NAMES}
        for name in SPLIT_NAMES:
            if not parts[name] and (name == "train" or sizes[name]):
                raise DataError(f"the {name} split would be empty; ask for more, or use a count (e.g. {name}=1)")
        return Splits(parts["train"], parts["validation"], parts["test"], dict(self.dropped), dict(self.dedup_counts))

    def report(self, tokenizer: Any = None, max_length: int | None = None) -> DataReport:
        """A :class:`~finetune_lib.data.report.DataReport` of the whole data set (before splitting)."""
        self._refuse_stream("reported whole", "report on")
        return build_report({self.name: self.records}, tokenizer, max_length, self.dropped, self.dedup_counts)
