"""``ArrowRecords``: records kept in a memory-mapped Arrow table (a ``datasets.Dataset``), not in Python.

It answers the same questions as :class:`~finetune_lib.data.records.Records` (length, iteration
over dict records, indexing, slicing, columns), but reads its rows in batches from the table, and
hands whole columns out as numpy arrays for column-wise work (hashing, splitting, tokenizing).
``DatasetBuilder.from_hf`` keeps its data in one; ``split`` returns ``Splits`` of them.

Needs the ``hf`` extra: ``pip install 'finetune_lib[hf]'``.

Example:
    >>> import datasets                                                       # doctest: +SKIP
    >>> recs = ArrowRecords(datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}), name="train")
    >>> len(recs), recs[0], recs.column("label")                              # doctest: +SKIP
    (2, {'text': 'a', 'label': 1}, array([1, 0]))
    >>> recs[1:].name, recs.select([1]).column("text")                        # doctest: +SKIP
    ('train', ['b'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, SupportsIndex, overload

import numpy as np

from . import arrow_data
from .records import Records, record_text

__all__ = ["ArrowRecords", "HF_EXTRA", "import_datasets"]

HF_EXTRA = "pip install 'finetune_lib[hf]'"
BATCH = 4096
"""Rows read at a time when iterating."""


def import_datasets() -> Any:
    """The ``datasets`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"Arrow-backed data (DatasetBuilder.from_hf, ArrowRecords) needs Hugging Face "
                          f"datasets: {HF_EXTRA}") from err
    return datasets


class ArrowRecords:
    """Dict records stored in a ``datasets.Dataset`` (memory-mapped Arrow), with a ``name``.

    Attributes:
        dataset: the ``datasets.Dataset`` holding the rows (its columns are the record keys).
        name: ``"train"``, ``"validation"``, a file stem...

    ``FineTuner.fit`` / ``evaluate`` and the ``Preprocessor`` accept it wherever a list of dicts is
    accepted; iteration reads :data:`BATCH` rows at a time.
    """

    def __init__(self, dataset: Any, name: str = "records") -> None:
        if not hasattr(dataset, "column_names") or isinstance(getattr(dataset, "column_names", None), dict):
            raise TypeError(f"ArrowRecords wraps one datasets.Dataset, got {type(dataset).__name__}; "
                            "for a DatasetDict pass one split, e.g. dataset['train']")
        self.dataset = dataset
        self.name = name

    # -- list-like -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.dataset.num_rows)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        columns = self.columns
        for batch in self.dataset.iter(batch_size=BATCH):
            values = [batch[c] for c in columns]
            for row in zip(*values, strict=True):
                yield dict(zip(columns, row, strict=True))

    @overload
    def __getitem__(self, index: SupportsIndex) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> ArrowRecords: ...

    def __getitem__(self, index: SupportsIndex | slice) -> dict[str, Any] | ArrowRecords:
        if isinstance(index, slice):
            return self.select(range(*index.indices(len(self))))
        if isinstance(index, (str, bytes)):
            raise TypeError(f"ArrowRecords is indexed by position; for a column use .column({index!r})")
        i = int(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {n} records")
        return dict(self.dataset[i % n])

    def select(self, indices: Iterable[int] | np.ndarray, name: str | None = None) -> ArrowRecords:
        """The records at ``indices`` (in that order), still Arrow-backed (an index map, no copy)."""
        idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        return ArrowRecords(self.dataset.select(idx), name=name or self.name)

    # -- columns -------------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """The record keys (the dataset's column names), in order."""
        return list(self.dataset.column_names)

    def arrow_column(self, key: str) -> Any:
        """Column ``key`` as a ``pyarrow.ChunkedArray`` in record order (zero-copy without an index map)."""
        try:
            return arrow_data.arrow_column(self.dataset, key)
        except KeyError:
            raise KeyError(f"{self.name}: no column {key!r}; columns: {self.columns}") from None

    def column(self, key: str, default: Any = None) -> np.ndarray | list[Any]:
        """The values of ``key``: a numpy array for numbers and booleans without nulls, else a list.

        A missing column gives ``[default] * len(self)``, as ``Records.column`` does.
        """
        if key not in self.dataset.column_names:
            return [default] * len(self)
        import pyarrow as pa

        col = self.arrow_column(key)
        kind = col.type
        if col.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                                    or pa.types.is_boolean(kind)):
            return col.to_numpy()
        return col.to_pylist()

    def iter_column(self, key: str, batch_size: int = 65536) -> Iterator[list[Any]]:
        """Column ``key`` as Python lists of at most ``batch_size`` values (bounded memory)."""
        col = self.arrow_column(key)
        for start in range(0, len(col), batch_size):
            yield col.slice(start, batch_size).to_pylist()

    @property
    def texts(self) -> list[str]:
        """The model-input text of each record (``text``, or ``prompt`` + ``target``)."""
        if "text" in self.dataset.column_names:
            return [str(t) for t in self.column("text")]
        return [record_text(r) for r in self]

    @property
    def labels(self) -> list[Any]:
        """The ``label`` of each record (``None`` where missing)."""
        values = self.column("label")
        return values.tolist() if isinstance(values, np.ndarray) else values

    def label_counts(self) -> dict[Any, int]:
        """Count of each label, most frequent first (ties in first-seen order; empty when there are no labels)."""
        if "label" not in self.dataset.column_names:
            return {}
        counts = [(v, n) for v, n in zip(*arrow_data.label_counts(self.dataset), strict=True) if v is not None]
        return dict(sorted(counts, key=lambda item: -item[1]))  # a stable sort: as Counter.most_common

    # -- copies and conversions ------------------------------------------------------------------
    def filter(self, predicate: Callable[[dict[str, Any]], bool]) -> ArrowRecords:
        """A new ``ArrowRecords`` with the records for which ``predicate`` is true (reads row by row)."""
        keep = [i for i, record in enumerate(self) if predicate(record)]
        return self.select(keep)

    def copy(self) -> ArrowRecords:
        """The same table under a new wrapper (Arrow data is immutable; nothing is copied)."""
        return ArrowRecords(self.dataset, name=self.name)

    def to_records(self) -> Any:
        """A plain :class:`~finetune_lib.data.records.Records` (every row in Python: small data only)."""
        return Records(self, name=self.name)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per record (needs pandas)."""
        return self.dataset.to_pandas()

    def __repr__(self) -> str:
        return f"ArrowRecords(name={self.name!r}, n={len(self)}, columns={self.columns})"
