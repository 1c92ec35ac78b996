"""Loading Hugging Face data for ``DatasetBuilder.from_hf``: the source, the column mapping and the row checks,
column-wise on Arrow (no Python records).

The source may be a ``datasets.Dataset``, a ``DatasetDict`` (with ``split=``), a folder written by
``save_to_disk``, data files (JSON Lines, JSON, CSV, TSV, Parquet, text) or a hub id with ``split=``.
Rows are checked as :func:`~finetune_lib.data.records.build_records` checks them (an empty text,
target, label or group drops the row and counts it under ``empty_<key>``), with ``pyarrow.compute``
over whole columns. ``ClassLabel`` columns (and lists of them) become their names.

Example:
    >>> ds = datasets.Dataset.from_dict({"review": ["good", " "], "y": [1, 0]})             # doctest: +SKIP
    >>> records, dropped = arrow_records_from({"text": "review", "label": "y"}, ds, "reviews")  # doctest: +SKIP
    >>> len(records), dropped                                                               # doctest: +SKIP
    (1, {'empty_text': 1})
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .arrow_records import HF_EXTRA, ArrowRecords, import_datasets
from .loaders import _is_class_label
from .records import LIST_KEYS, STANDARD_KEYS
from .values import DataError

__all__ = ["ARROW_KEYS", "STREAMING_LATER", "arrow_records_from", "is_hf_dataset", "load_hf_source"]

logger = logging.getLogger(__name__)

ARROW_KEYS = ("text", "label", "prompt", "target", "group")
"""Standard keys the Arrow path maps; conversations and token classification take the list path."""
STREAMING_LATER = ("streaming comes in a later release; load the split without streaming=True (it is "
                   "memory-mapped from disk, so it need not fit in memory)")
_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
                 ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".text": "text"}
SOURCE = "datasets.Dataset"


def is_hf_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a real ``datasets.Dataset`` (``datasets`` is not imported for the check)."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(obj, module.Dataset)


def load_hf_source(source: Any, split: str | None = None, streaming: bool = False) -> Any:
    """One split of ``source`` as a ``datasets.Dataset`` (or the duck-typed object given).

    Raises:
        NotImplementedError: ``streaming=True`` or an ``IterableDataset`` (streaming comes later).
        TypeError: a ``DatasetDict`` without ``split=`` (the message lists its splits).
        DataError: an unknown split, a folder or file that cannot be read, or an unreachable hub id.
    """
    if streaming or type(source).__name__ in ("IterableDataset", "IterableDatasetDict"):
        raise NotImplementedError(STREAMING_LATER)
    paths = isinstance(source, (list, tuple)) and bool(source) and not hasattr(source, "column_names") and \
        all(isinstance(f, (str, os.PathLike)) for f in source)
    if isinstance(source, (str, os.PathLike)) or paths:
        source = _load_path_or_hub(source, split)
    names = getattr(source, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        if split is None:
            raise TypeError(f"got a DatasetDict with splits {list(names)}; pass split=, e.g. "
                            f"split={next(iter(names), 'train')!r} (or one split, e.g. dataset['train'])")
        if split not in names:
            raise DataError(f"no split {split!r}; the dataset has splits {list(names)}")
        source = source[split]
    return source


def _load_path_or_hub(source: Any, split: str | None) -> Any:
    datasets = import_datasets()
    files = [str(f) for f in source] if isinstance(source, (list, tuple)) else [str(source)]
    first = Path(files[0])
    if len(files) == 1 and first.is_dir():
        if (first / "dataset_dict.json").exists() or (first / "state.json").exists():
            return datasets.load_from_disk(str(first))
        try:
            return datasets.load_dataset(str(first), split=split)
        except Exception as err:
            raise DataError(f"{first}: not a dataset folder (written by save_to_disk) and no data files "
                            f"datasets could read ({type(err).__name__}: {err})") from err
    if any(Path(f).exists() or any(ch in f for ch in "*?[") for f in files):
        suffixes = {"".join(s for s in Path(f.removesuffix(".gz")).suffixes[-1:]) for f in files}
        formats = {_FILE_FORMATS.get(s.lower()) for s in suffixes}
        if len(formats) != 1 or None in formats:
            raise DataError(f"cannot tell the format of {files}: give files ending in one of "
                            f"{sorted(_FILE_FORMATS)} (all of one kind)")
        kwargs = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
        try:
            return datasets.load_dataset(formats.pop(), data_files=files, split=split or "train", **kwargs)
        except Exception as err:
            raise DataError(f"{files}: datasets could not read the file(s) ({type(err).__name__}: {err})") from err
    if isinstance(source, (list, tuple)) or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise DataError(f"{source}: no such file or folder")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or \
            os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0")
        hint = (" HF_HUB_OFFLINE is set, so the hub is not asked: unset it, or load a local copy "
                "(a save_to_disk folder or data files)." if offline else
                " Check the id and the network, or load a local copy (a save_to_disk folder or data files).")
        raise DataError(f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}: "
                        f"{str(err)[:200]}).{hint}") from err


# --------------------------------------------------------------------------- column mapping and checks


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _arrow_mapping(dataset: Any, mapping: Mapping[str, Any]) -> dict[str, str] | None:
    """Which column feeds each standard key; None when a key needs the list path (conversations, tags)."""
    columns = list(dataset.column_names)
    schema = dataset.data.schema
    given = {k: v for k, v in mapping.items() if v is not None}
    resolved: dict[str, str] = {}
    for key in STANDARD_KEYS:
        col = given.get(key, key if key in columns and key not in given.values() else None)
        if col is None:
            continue
        if col not in columns:
            hint = " A dataset's columns are addressed by name." if isinstance(col, int) else ""
            raise DataError(f"{SOURCE}: column {col!r} (for {key}=) not found; available columns: {columns}.{hint}")
        if key in LIST_KEYS and key not in given and not _is_list(schema.field(col).type):
            continue  # a column called e.g. "tokens" that holds counts is kept as it is
        resolved[key] = col
    if "text" not in resolved and "target" not in resolved and "messages" not in resolved and "tokens" not in resolved:
        raise DataError(f"{SOURCE}: no text column; pass text=<column> (or prompt= and target= for generation, "
                        f"messages= for conversations, tokens= and tags= for token classification); "
                        f"available columns: {columns}")
    if any(key not in ARROW_KEYS for key in resolved):
        return None
    return resolved


def _class_labels(features: Any) -> dict[str, tuple[list[str], bool]] | None:
    """``{column: (names, is_list)}`` for ClassLabel columns and lists of them; None if one is nested deeper."""
    out: dict[str, tuple[list[str], bool]] = {}
    for column, feature in (features or {}).items():
        inner = getattr(feature, "feature", None)
        if _is_class_label(feature):
            out[column] = (list(feature.names), False)
        elif inner is not None and _is_class_label(inner):
            out[column] = (list(inner.names), True)
        elif "ClassLabel" in repr(feature):  # inside a struct or deeper: the list path decodes it
            return None
    return out


def _decode(column: Any, names: list[str], is_list: bool, name: str) -> Any:
    """Class ids -> names (-1, datasets' "no label", -> null), chunk by chunk."""
    import pyarrow as pa
    import pyarrow.compute as pc

    vocab = pa.array(names, type=pa.string())

    def ids_to_names(ids: Any) -> Any:
        ids = ids.cast(pa.int64())
        bad = pc.or_(pc.less(ids, -1), pc.greater_equal(ids, len(names))).fill_null(False)
        if pc.any(bad).as_py():
            raise DataError(f"{SOURCE}: column {name!r} holds class ids outside 0..{len(names) - 1} "
                            f"({names[:5]}...); fix the ClassLabel names or the ids")
        return vocab.take(pc.if_else(pc.equal(ids, -1), pa.scalar(None, pa.int64()), ids))

    chunks = []
    for chunk in column.chunks:
        if not is_list:
            chunks.append(ids_to_names(chunk))
            continue
        values = ids_to_names(chunk.values)
        if values.null_count:
            raise DataError(f"{SOURCE}: column {name!r} holds -1 (no label) inside a list of labels; "
                            "drop those ids from the lists")
        offsets = chunk.offsets
        mask = chunk.is_null() if chunk.null_count else None
        chunks.append(type(chunk).from_arrays(offsets, values, mask=mask))
    return pa.chunked_array(chunks, type=pa.list_(pa.string()) if not chunks else chunks[0].type) if is_list \
        else pa.chunked_array(chunks, type=pa.string())


def _missing(column: Any) -> np.ndarray:
    """True where a value is null, NaN, or a blank string."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = column.is_null()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        mask = pc.or_(mask, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0).fill_null(True))
    elif pa.types.is_floating(column.type):
        mask = pc.or_(mask, pc.is_nan(column).fill_null(True))
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _as_text(column: Any, key: str, col: str) -> Any:
    """A text column as strings: numbers as ``str(number)`` (as the list path does); other types refused."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = column.to_pylist()
        if any(isinstance(v, float) and v in (float("inf"), float("-inf")) for v in values):
            raise DataError(f"{SOURCE}: column {col!r} holds an infinite number, not a text; fix or drop those rows")
        return pa.chunked_array([pa.array([None if v is None or v != v else str(v) for v in values],
                                          type=pa.string())])
    raise DataError(f"{SOURCE}: column {col!r} (for {key}=) holds {kind}, expected text; map another column "
                    f"with {key}=<column>")


def _label_column(column: Any, col: str) -> Any:
    """Labels as the list path types them: integral floats become ints; lists must hold names or ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_floating(kind):
        finite = pc.drop_null(pc.if_else(pc.is_nan(column), None, column))
        if len(finite) == 0 or pc.all(pc.equal(pc.floor(finite), finite)).as_py():
            return pc.if_else(pc.is_nan(column), None, column).cast(pa.int64())
        return column
    if _is_list(kind):
        inner = kind.value_type
        if not (pa.types.is_string(inner) or pa.types.is_large_string(inner) or pa.types.is_integer(inner)):
            raise DataError(f"{SOURCE}: column {col!r} holds lists of {inner}; multi-label data needs lists of "
                            "label names or ids, e.g. ['sports']")
        return column
    if pa.types.is_struct(kind) or pa.types.is_map(kind):
        raise DataError(f"{SOURCE}: column {col!r} holds a {kind}; a label must be one int or string, or a list "
                        "of them (multi-label)")
    return column


def arrow_records_from(mapping: Mapping[str, Any], dataset: Any, name: str, strict: bool = False
                       ) -> tuple[ArrowRecords, dict[str, int]] | None:
    """Map and check ``dataset``'s columns on Arrow; ``(records, dropped)``, or None when the mapping needs
    the list path (conversations, token classification, ClassLabels inside structs).

    Raises:
        DataError: a named column is missing (the message lists the dataset's columns), a value has the
            wrong type, a row is empty under ``strict``, or no row is left.
    """
    import pyarrow as pa

    resolved = _arrow_mapping(dataset, mapping)
    class_labels = _class_labels(getattr(dataset, "features", None))
    if resolved is None or class_labels is None:
        return None
    ds = dataset
    records = ArrowRecords(ds, name=name)
    # 1. new columns: ClassLabel ids -> names, numbers in text columns -> strings, typed labels
    changed: dict[str, Any] = {}
    for col, (names, is_list) in class_labels.items():
        changed[col] = _decode(records.arrow_column(col), names, is_list, col)
    for key, col in resolved.items():
        original = changed.get(col, records.arrow_column(col))
        column = original
        if key in ("text", "prompt", "target"):
            column = _as_text(column, key, col)
        elif key == "label":
            column = _label_column(column, col)
        if key == "prompt" and column.null_count:
            column = column.fill_null("")
        if column is not original:
            changed[col] = column
    # 2. rows with an empty value: dropped and counted under the first key that is empty (as build_records)
    keep = np.ones(len(ds), dtype=bool)
    dropped: dict[str, int] = {}
    for key, col in resolved.items():
        if key == "prompt":
            continue
        missing = _missing(changed.get(col, records.arrow_column(col))) & keep
        if not missing.any():
            continue
        first = int(np.flatnonzero(missing)[0])
        if strict:
            raise DataError(f"{SOURCE}: row {first}: empty value in column {col!r} (for {key}=); fill it or drop "
                            "the row (strict=False drops and counts such rows)")
        dropped[f"empty_{key}"] = int(missing.sum())
        logger.warning("%s: dropped %d row(s), reason %r (e.g. row %d)", SOURCE, int(missing.sum()),
                       f"empty_{key}", first)
        keep &= ~missing
    if not keep.any():
        raise DataError(f"{SOURCE}: no records left (dropped: {dropped})")
    # 3. the table: changed columns replaced, mapped columns renamed to their keys, the rest kept
    for col, column in changed.items():
        ds = ds.remove_columns(col).add_column(col, pa.chunked_array(column) if not hasattr(column, "chunks")
                                               else column)
    clash = [c for c in ds.column_names if c in resolved and c not in resolved.values()]
    if clash:
        logger.warning("%s: column(s) %s replaced by the mapped column(s) %s", SOURCE, clash,
                       {k: resolved[k] for k in clash})
        ds = ds.remove_columns(clash)
    ds = ds.rename_columns({col: key for key, col in resolved.items() if col != key})
    ds = ds.select_columns([*resolved, *(c for c in ds.column_names if c not in resolved)])
    if not keep.all():
        ds = ds.select(np.flatnonzero(keep))
    return ArrowRecords(ds, name=name), dropped


def require_datasets_for(backend: str | None) -> None:
    """Raise the extra's install hint when ``backend="arrow"`` is asked for without ``datasets``."""
    if backend == "arrow":
        try:
            import_datasets()
        except ImportError as err:
            raise ImportError(f"backend='arrow' needs Hugging Face datasets: {HF_EXTRA}") from err
