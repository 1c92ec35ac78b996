"""Arrow-backed records (a `datasets.Dataset`, or an `ArrowRecords` wrapping one), read column-wise.

`Preprocessor.encode` and `FineTuner.fit` take such data without turning it into a list of dicts:
these helpers tell it apart (`is_arrow`), reach the `datasets.Dataset` behind it (`hf_dataset`), read it
in chunks of records (`record_chunks`), and read the columns that checks need (`label_counts`, `label_records`,
`record_keys`).

Example:
    >>> import datasets
    >>> ds = datasets.Dataset.from_list([{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    >>> is_arrow(ds), is_arrow([{"text": "good"}])
    (True, False)
    >>> [len(chunk) for start, chunk in record_chunks(ds, 1)]
    [1, 1]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .records import record_key

__all__ = ["arrow_column", "column", "column_names", "distinct_label_records", "hf_dataset", "is_arrow", "label_column", "label_counts",
           "label_records", "record_chunks", "record_keys"]


def is_arrow(data: Any) -> bool:
    """True for a `datasets.Dataset` (it has `column_names` and `_fingerprint`) or an object wrapping
    one in `.dataset` (`finetune_lib.data.arrow_records.ArrowRecords`)."""
    if isinstance(data, (list, tuple, dict, str)):
        return False
    inner = getattr(data, "dataset", None)
    return _is_hf(data) or (inner is not None and _is_hf(inner))


def _is_hf(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "_fingerprint") and hasattr(data, "with_format")


def hf_dataset(data: Any) -> Any:
    """The `datasets.Dataset` behind `data` (itself, or its `.dataset`)."""
    return data if _is_hf(data) else data.dataset


def column_names(data: Any) -> list[str]:
    """The column names of Arrow-backed `data`."""
    return list(hf_dataset(data).column_names)


def record_chunks(data: Any, size: int, start: int = 0, stop: int | None = None
                  ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """`(first row, records)` for rows `start..stop` of Arrow-backed `data`, `size` rows at a time.

    Each chunk is read column-wise (one Arrow slice) and turned into dicts, so memory holds one chunk
    of Python records at a time.
    """
    ds = hf_dataset(data).with_format(None)
    stop = len(ds) if stop is None else stop
    names = list(ds.column_names)
    for first in range(start, stop, size):
        columns = ds[first: min(first + size, stop)]
        yield first, [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]


def arrow_column(data: Any, name: str) -> Any:
    """One column of Arrow-backed `data` as a `pyarrow.ChunkedArray`, in row order: a selection of rows is
    applied by one `take` (zero-copy without one; `datasets`' own row lookup gathers row by row)."""
    ds = hf_dataset(data)
    if name not in ds.column_names:
        raise KeyError(f"no column {name!r}; columns: {list(ds.column_names)}")
    values = ds.data.column(name)
    indices = getattr(ds, "_indices", None)
    return values if indices is None else values.take(indices.column(0))


def column(data: Any, name: str) -> list[Any]:
    """One column of Arrow-backed `data` as a list, in row order (a selection of rows applied)."""
    return arrow_column(data, name).to_pylist()


def label_records(data: Any) -> list[dict[str, Any]]:
    """`{"label": value}` per row, read from the label column alone (a Python dict per row: multi-label class
    weights need each row's labels; the label mapping needs only `distinct_label_records`)."""
    return [{"label": v} for v in column(data, "label")]


def label_column(data: Any) -> Any:
    """The `label` column of Arrow-backed `data` as one `pyarrow.Array`, in row order (a selection applied)."""
    return arrow_column(data, "label").combine_chunks()


def label_counts(data: Any) -> tuple[list[Any], list[int]]:
    """The distinct labels of Arrow-backed `data` in first-seen order and the rows holding each, counted by
    `pyarrow.compute.value_counts` (no Python object per row); a list column (multi-label) counts its labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = label_column(data)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = pc.list_flatten(col)
    counts = pc.value_counts(col)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def distinct_label_records(data: Any) -> list[dict[str, Any]]:
    """`{"label": value}` once per distinct label (each label of a list column once), first-seen order: what
    `Preprocessor.fit_labels` needs, read column-wise."""
    return [{"label": v} for v in label_counts(data)[0]]


def record_keys(data: Any) -> list[str]:
    """`finetune_lib.data.records.record_key` of every record, read column-wise where the records are
    Arrow-backed with a `text` column or `prompt`/`target` columns (else record by record)."""
    if not is_arrow(data):
        return [record_key(r) for r in data]
    ds = hf_dataset(data).with_format(None)
    names = set(ds.column_names)
    if "text" in names and "messages" not in names and "tokens" not in names:
        return ["\x1f" if t is None else str(t) for t in column(ds, "text")]  # as record_key: str(text)
    if names & {"prompt", "target"} and not names & {"text", "messages", "tokens"}:
        prompts = column(ds, "prompt") if "prompt" in names else [None] * len(ds)
        targets = column(ds, "target") if "target" in names else [None] * len(ds)
        return [f"{p or ''}\x1f{t or ''}" for p, t in zip(prompts, targets)]
    return [record_key(r) for _, chunk in record_chunks(data, 10_000) for r in chunk]
