"""`ArrowFeatures`: tokenized features in a memory-mapped Arrow table, read as the list path's dicts.

`Preprocessor.encode` on Arrow-backed records (a `datasets.Dataset`, or `ArrowRecords`) writes its
features to Arrow IPC files (`finetune_lib.data.encode_cache`) and hands back this read-only
sequence over them. Row `i` reads back exactly the dict the list path builds for record `i`
(`input_ids`, `attention_mask`, `labels`, ...), so `collate` and the training loop take it unchanged.
What is stored, per row:

- `input_ids`: a list of `uint16` where the vocabulary has at most 65,536 entries, else `int32`;
- no attention mask: it is all ones over the row, rebuilt from the length when a row is read;
- the labels in the task's compact form: one `int64` class id (classification), one `float64`
  (regression), a `float32` row of 0/1 (multi-label), `int32` lists (seq2seq targets, token tags and
  `word_ids`); causal LM labels are the `input_ids` themselves outside masked spans, so only the
  learned spans are kept (`label_spans`: start, end, start, end, ... in tokens: two numbers for a
  prompt/target record, a few for a conversation) and the labels are rebuilt as -100 elsewhere.

Short review-like texts with the MiniLM tokenizer take about 2.6 bytes a token on disk (2 for the id,
plus the row's offset and label); see `bench/data_encode.py`.

Example:
    >>> features = pre.encode(hf_dataset, "train")            # ArrowFeatures
    >>> features[0]
    {'input_ids': [101, 2204, 102], 'attention_mask': [1, 1, 1], 'labels': 1}
    >>> features.lengths()[:3], features.take([2, 0])[0] == features[2]
    (array([3, 9, 5]), True)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .collate import IGNORE_INDEX

__all__ = ["ArrowFeatures", "ShardWriter", "feature_schema", "features_to_batch", "open_features"]

#: the schema metadata key that says how labels are stored ("spans", "column" or "none")
LAYOUT_KEY = b"finetune_lib.labels"


def feature_schema(task: str | None, label_kind: str | None, vocab_size: int) -> pa.Schema:
    """The Arrow schema of a task's features (`label_kind`: `Task.label_kind`, None for generation).

    Example:
        >>> feature_schema("classification", "class", 30522).field("input_ids").type
        ListType(list<item: uint16>)
    """
    ids = pa.uint16() if vocab_size <= 2**16 else pa.int32()
    fields = [pa.field("input_ids", pa.list_(ids))]
    layout = "column"
    if label_kind == "class":
        fields.append(pa.field("labels", pa.int64()))
    elif label_kind == "value":
        fields.append(pa.field("labels", pa.float64()))
    elif label_kind == "classes":
        fields.append(pa.field("labels", pa.list_(pa.float32())))
    elif label_kind == "tags":
        fields += [pa.field("labels", pa.list_(pa.int32())), pa.field("word_ids", pa.list_(pa.int32()))]
    elif task == "causal_lm":
        fields.append(pa.field("label_spans", pa.list_(pa.int32())))
        layout = "spans"
    else:  # seq2seq: the target's ids
        fields.append(pa.field("labels", pa.list_(pa.int32())))
    return pa.schema(fields, metadata={LAYOUT_KEY: layout.encode()})


def _list_array(values: Sequence[Sequence[int]], type_: pa.DataType) -> pa.Array:
    """A list array of int lists, built through numpy (no per-value Python conversion by Arrow)."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(values), dtype=type_.value_type.to_pandas_dtype(), count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_.value_type))


def _spans(features: Sequence[dict[str, Any]]) -> pa.Array:
    """Causal LM labels as the spans where they equal the ids (start, end, ... per row), vectorized."""
    ids = [f["input_ids"] for f in features]
    labels = [f["labels"] for f in features]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    if any(len(a) != len(b) for a, b in zip(ids, labels)):
        raise RuntimeError("causal LM labels must be as long as their input_ids to be stored as spans")
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat_ids = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(offsets[-1]))
    flat_labels = np.fromiter(chain.from_iterable(labels), dtype=np.int64, count=int(offsets[-1]))
    learned = flat_labels != IGNORE_INDEX
    if not np.array_equal(flat_labels[learned], flat_ids[learned]):
        raise RuntimeError("causal LM labels differ from their input_ids outside the masked tokens; "
                           "they cannot be stored as spans")
    n = len(learned)
    row_first = np.zeros(n, dtype=bool)
    row_last = np.zeros(n, dtype=bool)
    nonempty = lengths > 0
    row_first[offsets[:-1][nonempty]] = True
    row_last[offsets[1:][nonempty] - 1] = True
    before = np.concatenate([[False], learned[:-1]]) & ~row_first
    after = np.concatenate([learned[1:], [False]]) & ~row_last
    starts = np.flatnonzero(learned & ~before)
    ends = np.flatnonzero(learned & ~after) + 1
    rows = np.searchsorted(offsets, starts, side="right") - 1
    values = np.empty(2 * len(starts), dtype=np.int32)
    values[0::2], values[1::2] = starts - offsets[rows], ends - offsets[rows]
    span_offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(2 * np.bincount(rows, minlength=len(ids)), out=span_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(span_offsets), pa.array(values, type=pa.int32()))


def features_to_batch(features: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """The list path's feature dicts as one record batch of `schema` (`feature_schema`)."""
    extra = set(features[0]) - {"attention_mask", "labels"} - set(schema.names) if features else set()
    if extra:
        raise RuntimeError(f"features have keys {sorted(extra)} that the Arrow schema does not hold")
    arrays = []
    for field in schema:
        if field.name == "input_ids":
            arrays.append(_list_array([f["input_ids"] for f in features], field.type))
        elif field.name == "label_spans":
            arrays.append(_spans(features))
        elif pa.types.is_list(field.type) and all(field.name in f for f in features):
            arrays.append(_list_array([f[field.name] for f in features], field.type))
        else:  # scalars, and lists that some rows lack (null: no labels)
            arrays.append(pa.array([f.get(field.name) for f in features], type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class ShardWriter:
    """Writes record batches to one Arrow IPC file.

    Example:
        >>> with ShardWriter(path, schema) as w:
        ...     w.write(features_to_batch(features, schema))
    """

    def __init__(self, path: str | Path, schema: pa.Schema):
        self.path, self.rows = Path(path), 0
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_features(paths: Sequence[str | Path]) -> ArrowFeatures:
    """Memory-map Arrow IPC files (in order) as one `ArrowFeatures`; raises `pyarrow.ArrowInvalid`
    (or `OSError`) for a file that is not a whole IPC file."""
    batches: list[pa.RecordBatch] = []
    schema = None
    for path in paths:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        schema = reader.schema
        batches += [reader.get_batch(i) for i in range(reader.num_record_batches)]
    if schema is None:
        raise ValueError("no Arrow files to open")
    return ArrowFeatures(pa.Table.from_batches(batches, schema=schema))


class ArrowFeatures(Sequence[dict[str, Any]]):
    """A read-only sequence of features over an Arrow table (usually memory-mapped).

    Args:
        table: the features in `feature_schema`'s form.

    Example:
        >>> features = pre.encode(dataset, "train")
        >>> len(features), features[0]["input_ids"][:3]
        (1000, [101, 2204, 2143])
        >>> batch = pre.collate(features.take([5, 1, 9]))
    """

    def __init__(self, table: pa.Table):
        self.table = table
        self.layout = (table.schema.metadata or {}).get(LAYOUT_KEY, b"column").decode()
        self._batches = [b for b in table.to_batches() if b.num_rows]
        self._starts = np.zeros(len(self._batches) + 1, dtype=np.int64)
        np.cumsum([b.num_rows for b in self._batches], out=self._starts[1:])
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"feature {index} out of range for {len(self)} features")
        return self.take([i])[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self._batches:
            for start in range(0, batch.num_rows, 1024):
                yield from self._rows(batch.slice(start, 1024))

    def take(self, indices: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The features at `indices`, in that order, read one Arrow `take` per stored chunk."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return []
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"feature indices must be in 0..{len(self) - 1}")
        chunk = np.searchsorted(self._starts, idx, side="right") - 1
        out: list[Any] = [None] * len(idx)
        for c in np.unique(chunk):
            where = np.flatnonzero(chunk == c)
            rows = self._rows(self._batches[c].take(pa.array(idx[where] - self._starts[c])))
            for k, row in zip(where.tolist(), rows):
                out[k] = row
        return out

    def _rows(self, batch: pa.RecordBatch) -> list[dict[str, Any]]:
        ids = batch.column("input_ids").to_pylist()
        rows = [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]
        for name in batch.schema.names:
            if name == "input_ids":
                continue
            values = batch.column(name).to_pylist()
            if name == "label_spans":
                for row, x, spans in zip(rows, ids, values):
                    labels = [IGNORE_INDEX] * len(x)
                    for a, b in zip(spans[0::2], spans[1::2]):
                        labels[a:b] = x[a:b]
                    row["labels"] = labels
                continue
            for row, v in zip(rows, values):
                if v is not None:
                    row[name] = v
        return rows

    def lengths(self) -> np.ndarray:
        """`Preprocessor.length` of every feature, computed column-wise (no Python loop over rows)."""
        if self._lengths is None:
            n = pc.list_value_length(self.table.column("input_ids")).to_numpy(zero_copy_only=False)
            labels = self.table.column("labels") if "labels" in self.table.schema.names else None
            if labels is not None and pa.types.is_list(labels.type) and pa.types.is_integer(labels.type.value_type):
                m = pc.fill_null(pc.list_value_length(labels), 0).to_numpy(zero_copy_only=False)
                n = np.maximum(n, m)
            self._lengths = np.asarray(n, dtype=np.int64)
        return self._lengths

    def max_token_id(self) -> int:
        """The largest token id of all features (-1 when there are none)."""
        flat = pc.list_flatten(self.table.column("input_ids"))
        top = pc.max(flat).as_py() if len(flat) else None
        return -1 if top is None else int(top)

    def has(self, key: str) -> bool:
        """True when every feature has `key` (labels: stored and not null in any row)."""
        if key in ("input_ids", "attention_mask"):
            return True
        name = "label_spans" if key == "labels" and self.layout == "spans" else key
        if name not in self.table.schema.names:
            return False
        return self.table.column(name).null_count == 0

    @property
    def nbytes(self) -> int:
        """Bytes of the table's buffers."""
        return int(self.table.nbytes)

    def __repr__(self) -> str:
        return f"ArrowFeatures({len(self)} rows, columns {self.table.schema.names})"


def describe_schema(schema: pa.Schema) -> str:
    """A short JSON of a schema's fields, for cache metadata."""
    return json.dumps({f.name: str(f.type) for f in schema})
