"""Streaming: records read as training goes, for corpora larger than memory or disk.

:class:`StreamingRecords` wraps an iterable source (a ``datasets.IterableDataset``, a list, or a
zero-argument callable that returns a fresh iterator) and maps and checks each row as the Arrow path
does (an empty text, target, label or group drops the row and counts it in ``dropped``; with
``strict=True`` it is refused, naming its position in the source).

:class:`StreamOrder` is the library's own deterministic order over such a source. ``IterableDataset``'s
shuffle buffer loses its contents on resume, so it is not used:

* the source is cut into consecutive buffers of ``buffer_size`` rows (rounded up to a multiple of the
  micro-batch size); buffer ``c`` holds source rows ``[c * buffer_size, (c + 1) * buffer_size)``;
* each buffer is encoded as it is read (``encode``: the run's ``Preprocessor.encode`` on the buffer's
  records, packed within the buffer with ``pack=True``), then cut into micro-batches by
  :class:`~finetune_lib.data.collate.LengthGroupedBatches` with a seed drawn from (seed, buffer index)
  and the epoch: length grouping, and shuffling, only within a buffer;
* the data position is (epoch, micro-batches consumed in the epoch) plus the buffer holding the next
  micro-batch and the micro-batch number it starts at (``StreamPosition``); a resumed run reads from
  that buffer's first source row (``IterableDataset.skip``), re-derives the same order and skips the
  micro-batches already done, so the examples seen are those of an uninterrupted run, bit for bit.

Example ids (``TrainState.example_ids``) are ``buffer start + index within the buffer``: unique in the
source, the same in every epoch.

Example:
    >>> stream = StreamingRecords([{"review": "good", "y": "pos"}, {"review": "bad", "y": "neg"}],
    ...                           text="review", label="y")
    >>> [r["text"] for r in stream]
    ['good', 'bad']
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .collate import LengthGroupedBatches
from .values import DataError

__all__ = ["STREAM_SPLIT_HINT", "MicroBatch", "StreamOrder", "StreamPosition", "StreamingRecords", "is_stream"]

logger = logging.getLogger(__name__)

STREAM_SPLIT_HINT = ("a streaming data set is read once, in order, and is never held whole, so it cannot be "
                     "{what}. Pass a separate validation split instead (DatasetBuilder.from_hf(..., "
                     "split='validation'), not streamed), or hold out the stream's first rows with "
                     "builder.take(n) (a small in-memory DatasetBuilder: split or deduplicate that) and train on "
                     "builder.skip(n); to {do} the whole corpus, load it without streaming=True (memory-mapped "
                     "from disk)")
_CHECKED = ("text", "label", "target", "group")  # an empty value drops the row (a prompt may be empty)
_MAPPED = ("text", "label", "prompt", "target", "group", "messages", "tokens", "tags", "spans")


def is_stream(data: Any) -> bool:
    """True for :class:`StreamingRecords`, a ``datasets.IterableDataset`` or a builder holding a stream."""
    records = getattr(data, "records", None)
    return (isinstance(data, StreamingRecords) or isinstance(records, StreamingRecords)
            or type(data).__name__ == "IterableDataset")


class StreamingRecords:
    """Records read from an iterable source as they are needed; re-iterable (each pass reads again).

    Args:
        source: a ``datasets.IterableDataset`` (e.g. ``load_dataset("json", data_files=..., streaming=True,
            split="train")``), a list or other re-iterable of dicts, or a zero-argument callable that
            returns a fresh iterator of dicts.
        text, label, prompt, target, group, messages, tokens, tags, spans: the column holding each
            standard key (a key whose column has its name maps by itself).
        name: a name for messages.
        strict: refuse a row with an empty value (naming its position) instead of dropping it.
        label_names: class names for the label column's ids; by default those of a ``ClassLabel``
            column of an ``IterableDataset``.
        buffer_size: source rows read, encoded, shuffled and length-grouped together in training
            (rounded up to a multiple of the micro-batch size); memory holds about one buffer.

    Attributes:
        dropped: rows dropped so far, per reason (``empty_text``, ...), counted once per source row
            however often it is read.

    Example:
        >>> ds = datasets.load_dataset("json", data_files="big.jsonl", streaming=True, split="train")  # doctest: +SKIP
        >>> stream = StreamingRecords(ds, text="review", label="stars")                              # doctest: +SKIP
        >>> next(iter(stream))                                                                      # doctest: +SKIP
        {'text': 'Great product', 'label': 5}
    """

    def __init__(self, source: Any, text: str | None = None, label: str | None = None, prompt: str | None = None,
                 target: str | None = None, group: str | None = None, messages: str | None = None,
                 tokens: str | None = None, tags: str | None = None, spans: str | None = None,
                 name: str = "stream", strict: bool = False, label_names: list[str] | None = None,
                 buffer_size: int = 10_000) -> None:
        if isinstance(source, (str, bytes, Mapping)) or not (callable(source) or isinstance(source, Iterable)):
            raise TypeError(f"StreamingRecords needs an iterable of dicts (a datasets.IterableDataset, a list) or a "
                            f"callable returning a fresh iterator, not {type(source).__name__}; for files use "
                            "DatasetBuilder.from_hf(path, streaming=True)")
        if isinstance(source, Iterator):
            raise TypeError("StreamingRecords needs a source it can read again (every epoch, and on resume): pass "
                            "the list, the IterableDataset, or a function returning a fresh generator, not an "
                            "iterator")
        given = {"text": text, "label": label, "prompt": prompt, "target": target, "group": group,
                 "messages": messages, "tokens": tokens, "tags": tags, "spans": spans}
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size!r}: give the number of rows read and shuffled together, "
                             "an int >= 1 (e.g. 10_000)")
        self.source, self.name, self.strict, self.buffer_size = source, name, strict, buffer_size
        self.mapping = {key: col for key, col in given.items() if col is not None}
        self.label_names = label_names if label_names is not None else _class_label_names(source, self.mapping)
        self.dropped: dict[str, int] = {}
        self._counted_to = 0  # rows below this source position are counted in `dropped` already

        columns = getattr(source, "column_names", None)
        missing = [col for col in self.mapping.values() if isinstance(columns, list) and col not in columns]
        if missing:
            raise DataError(f"{name}: column(s) {missing} not found; available columns: {columns}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_from(0)

    def take(self, n: int) -> list[dict[str, Any]]:
        """The kept records among the first `n` source rows (read now), e.g. to hold them out for validation.

        Example:
            >>> StreamingRecords([{"text": "a"}, {"text": " "}, {"text": "c"}]).take(2)
            [{'text': 'a'}]
        """
        return [record for _, (_, record) in zip(range(n), self.rows(0)) if record is not None]

    def skip(self, n: int) -> StreamingRecords:
        """The same stream without its first `n` source rows (those held out with :meth:`take`).

        Example:
            >>> [r["text"] for r in StreamingRecords([{"text": "a"}, {"text": "b"}]).skip(1)]
            ['b']
        """
        rest = copy.copy(self)
        source = self.source
        if hasattr(source, "skip"):
            rest.source = source.skip(n)
        elif isinstance(source, Sequence):
            rest.source = source[n:]
        else:
            rest.source = lambda: self._raw(n)
        rest.dropped, rest._counted_to = {}, 0
        return rest

    def __repr__(self) -> str:
        return f"StreamingRecords(name={self.name!r}, mapping={self.mapping}, dropped={self.dropped})"

    def iter_from(self, start: int) -> Iterator[dict[str, Any]]:
        """The kept records from source row `start` on (mapped and checked)."""
        return (record for _, record in self.rows(start) if record is not None)

    def rows(self, start: int = 0) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """``(source position, record)`` for every source row from `start` on; None for a dropped row."""
        for position, row in enumerate(self._raw(start), start):
            yield position, self._record(position, row)

    def _raw(self, start: int) -> Iterator[Any]:
        source = self.source
        if start and hasattr(source, "skip"):  # datasets.IterableDataset: skipped by the reader
            return iter(source.skip(start))
        rows = iter(source() if callable(source) and not isinstance(source, Iterable) else source)
        for _ in range(start):
            if next(rows, None) is None:
                break
        return rows

    def _record(self, position: int, row: Any) -> dict[str, Any] | None:
        if not isinstance(row, Mapping):
            raise DataError(f"{self.name}: row {position} is a {type(row).__name__}, not a dict of columns")
        record = dict(row)
        for key, col in self.mapping.items():
            if col not in record:
                raise DataError(f"{self.name}: column {col!r} (for {key}=) not found in row {position}; its columns "
                                f"are {sorted(record)}")
        for key, col in self.mapping.items():
            if col != key:
                record[key] = record.pop(col)
        if self.label_names is not None and isinstance(record.get("label"), int) and not isinstance(
                record["label"], bool):
            record["label"] = self._label_name(record["label"], position)
        if record.get("prompt", "") is None:
            record["prompt"] = ""
        for key in ("text", "prompt", "target"):
            if isinstance(record.get(key), (int, float)) and not isinstance(record[key], bool) and \
                    not _empty(record[key]):
                record[key] = str(record[key])
        empty = next((k for k in _CHECKED if k in record and _empty(record[k])), None)
        if empty is None:
            return record
        if self.strict:
            raise DataError(f"{self.name}: row {position}: empty value for {empty}=; fill it or drop the row "
                            "(strict=False drops and counts such rows)")
        if position >= self._counted_to:
            self.dropped[f"empty_{empty}"] = self.dropped.get(f"empty_{empty}", 0) + 1
        self._counted_to = max(self._counted_to, position + 1)
        return None

    def _label_name(self, value: int, position: int) -> str | None:
        names = self.label_names or []
        if value == -1:
            return None  # datasets' "no label": an empty label
        if not 0 <= value < len(names):
            raise DataError(f"{self.name}: row {position} has class id {value}, outside 0..{len(names) - 1} "
                            f"({names[:5]}...); fix the ClassLabel names or the ids")
        return names[value]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def _class_label_names(source: Any, mapping: Mapping[str, str]) -> list[str] | None:
    """The names of the label column's ``ClassLabel`` feature (an ``IterableDataset``'s), else None."""
    features = getattr(source, "features", None) or {}
    feature = features.get(mapping.get("label", "label")) if hasattr(features, "get") else None
    names = getattr(feature, "names", None)
    return list(names) if type(feature).__name__ == "ClassLabel" and names else None


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream's next micro-batch comes from: buffer `chunk` of `epoch`, whose first micro-batch
    is number `first_batch` of the epoch. Saved in checkpoints beside (epoch, batch_in_epoch)."""

    epoch: int
    chunk: int
    first_batch: int

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "chunk": self.chunk, "first_batch": self.first_batch}


@dataclass
class MicroBatch:
    """One micro-batch of a stream: its example ids, their features, and the position it was read at."""

    ids: list[int]
    features: dict[int, dict[str, Any]]
    position: StreamPosition


class StreamOrder:
    """The deterministic, resumable micro-batch order over a stream (see the module docstring).

    Args:
        stream: the records.
        encode: turns one buffer's records into features (the run's ``Preprocessor.encode``).
        length: the length of one feature (``Preprocessor.length``), for length grouping.
        batch_size: examples per micro-batch.
        buffer_size: source rows read, encoded and ordered together (rounded up to a multiple of
            `batch_size`); memory holds about one buffer of features.
        seed: the run's seed.
        group_by_length: group similar lengths within a buffer (else plain shuffled batches).

    Example:
        >>> order = StreamOrder(stream, pre.encode, pre.length, batch_size=8, buffer_size=1000)  # doctest: +SKIP
        >>> batch = next(order.micro_batches(epoch=0, start=0))                                 # doctest: +SKIP
    """

    def __init__(self, stream: StreamingRecords, encode: Callable[[list[dict[str, Any]], int], list[dict[str, Any]]],
                 length: Callable[[dict[str, Any]], int], batch_size: int, buffer_size: int = 10_000, seed: int = 0,
                 group_by_length: bool = True) -> None:
        if buffer_size < 1 or batch_size < 1:
            raise ValueError(f"buffer_size ({buffer_size}) and batch_size ({batch_size}) must be >= 1")
        self.stream, self.encode, self.length = stream, encode, length
        self.batch_size, self.seed, self.group_by_length = batch_size, seed, group_by_length
        self.buffer_size = -(-buffer_size // batch_size) * batch_size

    def buffers(self, first: int = 0) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(buffer index, kept records)`` from buffer `first` on, read in one pass over the source."""
        chunk, records, end = first, [], (first + 1) * self.buffer_size
        for position, record in self.stream.rows(first * self.buffer_size):
            if position >= end:
                if records:
                    yield chunk, records
                chunk, records, end = chunk + 1, [], end + self.buffer_size
            if record is not None:
                records.append(record)
        if records:
            yield chunk, records

    def chunk_batches(self, epoch: int, chunk: int, features: list[dict[str, Any]]) -> list[list[int]]:
        """The micro-batches (indices into the buffer's features) of buffer `chunk` in `epoch`."""
        lengths = [self.length(f) for f in features]
        return LengthGroupedBatches(lengths, self.batch_size, seed=self.seed * 1_000_003 + chunk,
                                    group_by_length=self.group_by_length).epoch(epoch)

    def micro_batches(self, epoch: int, start: int, position: StreamPosition | None = None) -> Iterator[MicroBatch]:
        """The micro-batches of `epoch` from number `start` on; `position` (saved with `start`) says which
        buffer holds micro-batch `start`, so only that buffer on is read (else the epoch is read from its
        beginning and the first `start` micro-batches skipped)."""
        if position is None or position.epoch != epoch or position.first_batch > start:
            position = StreamPosition(epoch, 0, 0)
        first_batch = position.first_batch
        for chunk, records in self.buffers(position.chunk):
            base = chunk * self.buffer_size
            features = self.encode(records, base)
            if len(features) > self.buffer_size:
                raise ValueError(f"buffer {chunk} of {self.stream.name} encoded into {len(features)} rows, more than "
                                 f"its {self.buffer_size} source rows")
            batches = self.chunk_batches(epoch, chunk, features)
            here = StreamPosition(epoch, chunk, first_batch)
            for k in range(max(0, start - first_batch), len(batches)):
                ids = [base + i for i in batches[k]]
                yield MicroBatch(ids, {base + i: features[i] for i in batches[k]}, here)
            first_batch += len(batches)


def load_stream(source: Any, split: str | None = None) -> Any:
    """One split of `source` as a ``datasets.IterableDataset``: an ``IterableDataset`` (or a dict of them,
    with ``split=``), a ``Dataset`` or ``save_to_disk`` folder (read as a stream), data files
    (``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet``/``.txt``) or a hub id with ``split=``.

    Raises:
        TypeError: a dict of splits without ``split=``.
        DataError: an unknown split, or a path that cannot be read.
    """
    import os
    from pathlib import Path

    from .arrow_source import _FILE_FORMATS, load_hf_source

    names = getattr(source, "column_names", None)
    if type(source).__name__ == "IterableDatasetDict" or (isinstance(names, dict) and hasattr(source, "keys")):
        if split is None or split not in source:
            raise (TypeError if split is None else DataError)(
                f"got splits {list(source)}; pass split=, e.g. split={next(iter(source), 'train')!r}")
        source = source[split]
    if type(source).__name__ == "IterableDataset":
        return source
    files = [str(f) for f in source] if isinstance(source, (list, tuple)) else None
    path = str(source) if isinstance(source, (str, os.PathLike)) else None
    if files is None and path is not None and not Path(path).is_dir() and (
            Path(path).exists() or any(ch in path for ch in "*?[")):
        files = [path]
    if files and all(isinstance(f, str) for f in files):
        suffixes = {Path(f.removesuffix(".gz")).suffix.lower() for f in files}
        formats = {_FILE_FORMATS.get(s) for s in suffixes}
        if len(formats) != 1 or None in formats:
            raise DataError(f"cannot tell the format of {files}: give files ending in one of "
                            f"{sorted(_FILE_FORMATS)} (all of one kind)")
        from .arrow_records import import_datasets

        kwargs = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
        try:
            return import_datasets().load_dataset(formats.pop(), data_files=files, split=split or "train",
                                                  streaming=True, **kwargs)
        except Exception as err:
            raise DataError(f"{files}: datasets could not read the file(s) ({type(err).__name__}: {err})") from err
    if path is not None and not Path(path).exists() and not path.startswith((".", "/", "~")) and path.count("/") <= 1:
        from .arrow_records import import_datasets

        try:  # a hub id
            return import_datasets().load_dataset(path, split=split, streaming=True)
        except Exception as err:
            raise DataError(f"could not stream {path!r} from the Hugging Face hub ({type(err).__name__}: "
                            f"{str(err)[:200]}); check the id and the network, or stream local files") from err
    dataset = load_hf_source(source, split=split)  # a Dataset, a DatasetDict, a save_to_disk folder
    return dataset.to_iterable_dataset() if hasattr(dataset, "to_iterable_dataset") else dataset
