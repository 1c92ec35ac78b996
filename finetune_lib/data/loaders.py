"""Reading sources into a :class:`RawTable`: rows of ``column -> value`` with their locations.

Files: JSONL, JSON (a list of objects), CSV, TSV, plain text (one record per line, or per
blank-line-separated block), Parquet (optional ``pyarrow``), each optionally gzip-compressed.
In-memory sources: pandas DataFrames, Hugging Face ``datasets.Dataset`` (duck-typed), lists of dicts.

Mapping the columns onto the standard keys and validating values is :func:`records.build_records`'s job.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import STANDARD_KEYS
from .values import DataError, is_number

logger = logging.getLogger(__name__)

__all__ = ["DataError", "Drops", "RawTable", "FORMATS", "class_label_names", "detect_format", "read_file", "read_text",
           "table_from_dataframe", "table_from_hf", "table_from_records"]

FORMATS = ("jsonl", "json", "csv", "tsv", "txt", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".tab": "tsv", ".txt": "txt", ".text": "txt", ".parquet": "parquet", ".pq": "parquet"}


class Drops:
    """Counts of dropped rows per reason, with the first few locations of each for messages."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.where: dict[str, list[str]] = {}

    def add(self, reason: str, location: str) -> None:
        self.counts[reason] += 1
        examples = self.where.setdefault(reason, [])
        if len(examples) < 3:
            examples.append(location)

    def log(self, source: str) -> None:
        for reason, n in self.counts.items():
            logger.log(logging.INFO if reason == "blank_line" else logging.WARNING,"%s: dropped %d row(s), reason %r (e.g. %s)", source, n, reason,
                           ", ".join(self.where[reason]))


@dataclass
class RawTable:
    """Rows read from a source, before column mapping."""

    rows: list[dict[Any, Any]]
    locations: list[str]
    columns: list[Any]
    source: str
    typed: bool = True
    """Values carry their own types (JSON, pandas, Parquet); False where all are strings (CSV, TSV)."""
    headerless: bool = False
    """Columns are positions 0, 1, ... (a delimited file without a header line)."""
    drops: Drops = field(default_factory=Drops)


# --------------------------------------------------------------------------- decoding


def _guess_encoding(data: bytes) -> str:
    for candidate in ("utf-8", "cp1252"):
        try:
            data.decode(candidate)
            return candidate
        except UnicodeDecodeError:
            continue
    return "latin-1"


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Decode a file (gunzipping ``*.gz``); a UTF-8 or UTF-16 byte-order mark is handled silently.

    Raises:
        DataError: the bytes are not valid in ``encoding``; says where and which encoding to try.
    """
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and "16" not in encoding:
        return data.decode("utf-16")
    if codecs.lookup(encoding).name == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        guess = _guess_encoding(data)
        raise DataError(
            f"{path}: cannot decode the file as encoding={encoding!r}: byte(s) {data[err.start:err.end]!r} "
            f"at byte offset {err.start} (line {line}, column {column}) are invalid ({err.reason}). "
            f"The file is in another encoding; pass it, e.g. "
            f'DatasetBuilder.from_file({str(path)!r}, ..., encoding="{guess}")'
        ) from err


# --------------------------------------------------------------------------- formats


def detect_format(path: Path, format: str | None = None) -> str:
    """The format named by ``format`` or by the file's extension (``.gz`` looked through)."""
    if format is not None:
        fmt = {"text": "txt", "ndjson": "jsonl", "pq": "parquet"}.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
        return fmt
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    found = _EXTENSIONS.get(suffix.lower())
    if found is None:
        raise ValueError(f"{path}: cannot tell the format from the extension {suffix!r}; "
                         f"pass format= one of {list(FORMATS)}")
    return found


def _lines(text: str) -> list[str]:
    """Split on newlines only (str.splitlines would also split on \\x0b, \\x1c, U+2028 inside text)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _sniff_tabs(lines: list[str]) -> bool:
    sample = [line for line in lines[:1000] if line.strip()]
    return bool(sample) and sum("\t" in line for line in sample) > len(sample) / 2


def read_file(path: str | Path, *, format: str | None = None, encoding: str = "utf-8",
              delimiter: str | None = None, has_header: bool | None = None, blocks: bool = False,
              by_index: bool = False, by_name: bool = False) -> RawTable:
    """Read a file into a :class:`RawTable`.

    ``by_index`` / ``by_name`` say how the caller addresses columns (positions or names), which
    decides ``has_header=None`` for delimited files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    fmt = detect_format(path, format)
    if fmt == "parquet":
        return _read_parquet(path)
    text = read_text(path, encoding)
    src = str(path)
    if fmt == "jsonl":
        return _read_jsonl(text, src)
    if fmt == "json":
        return _read_json(text, src)
    lines = _lines(text)
    declared = fmt
    if fmt == "txt" and not blocks and (delimiter is not None or (format is None and _sniff_tabs(lines))):
        fmt = "tsv"
    if fmt == "txt":
        return _read_blocks(lines, src) if blocks else _read_lines(lines, src)
    if fmt == "csv":
        rows = _csv_rows(text, delimiter or ",")
    else:
        sep = delimiter or "\t"
        rows = [(i, line.split(sep)) for i, line in enumerate(lines, 1)]
    return _delimited(rows, src, has_header, by_index, by_name, default_header=declared in ("csv", "tsv"))


def _csv_rows(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    start = 1
    for fields in reader:
        rows.append((start, fields))
        start = reader.line_num + 1
    return rows


def _read_lines(lines: list[str], src: str) -> RawTable:
    table = RawTable([], [], ["text"], src, typed=False)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            table.drops.add("blank_line", f"{src}:{i}")
            continue
        table.rows.append({"text": line})
        table.locations.append(f"{src}:{i}")
    return table


def _read_blocks(lines: list[str], src: str) -> RawTable:
    table = RawTable([], [], ["text"], src, typed=False)
    block: list[str] = []
    start = 0
    for i, line in enumerate([*lines, ""], 1):
        if line.strip():
            if not block:
                start = i
            block.append(line)
        elif block:
            table.rows.append({"text": "\n".join(block)})
            table.locations.append(f"{src}:{start}")
            block = []
    return table


def _looks_like_header(first: list[str], rest: list[list[str]], default: bool) -> bool:
    if any(v.strip().lower() in STANDARD_KEYS for v in first):
        return True
    sample = [r for r in rest[:200] if len(r) == len(first)]
    numeric = [j for j in range(len(first)) if sample and all(is_number(r[j]) for r in sample)]
    if any(not is_number(first[j]) for j in numeric):
        return True  # a numeric column whose first value is a word: a header
    return False if numeric else default


def _delimited(rows: list[tuple[int, list[str]]], src: str, has_header: bool | None, by_index: bool,
               by_name: bool, default_header: bool) -> RawTable:
    table = RawTable([], [], [], src, typed=False)
    data = []
    for line_no, fields in rows:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            table.drops.add("blank_line", f"{src}:{line_no}")
        else:
            data.append((line_no, fields))
    if not data:
        raise DataError(f"{src}: the file has no rows")
    width = Counter(len(f) for _, f in data).most_common(1)[0][0]
    # leading lines whose field count differs from the file's (a title, a header without the delimiter)
    while data and len(data[0][1]) != width:
        line_no, fields = data.pop(0)
        table.drops.add("stray_header", f"{src}:{line_no}")
        logger.info("%s:%d: dropped a stray line with %d field(s) where the file has %d: %r",
                       src, line_no, len(fields), width, "\t".join(fields)[:80])
    if has_header is None:
        if by_index or by_name:
            has_header = by_name
        else:
            has_header = _looks_like_header(data[0][1], [f for _, f in data[1:]], default_header)
    if has_header:
        line_no, header = data.pop(0)
        table.columns = [h.strip() or f"column_{j}" for j, h in enumerate(header)]
        dupes = sorted({c for c in table.columns if table.columns.count(c) > 1})
        if dupes:
            raise DataError(f"{src}:{line_no}: the header repeats column name(s) {dupes}; rename them")
    else:
        table.columns = list(range(width))
        table.headerless = True
    for line_no, fields in data:
        if len(fields) != width:
            table.drops.add("wrong_field_count", f"{src}:{line_no}")
            continue
        table.rows.append(dict(zip(table.columns, fields, strict=True)))
        table.locations.append(f"{src}:{line_no}")
    return table


def _read_jsonl(text: str, src: str) -> RawTable:
    table = RawTable([], [], [], src)
    columns: dict[str, None] = {}
    for i, line in enumerate(_lines(text), 1):
        if not line.strip():
            table.drops.add("blank_line", f"{src}:{i}")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{src}:{i}: invalid JSON at column {err.colno}: {err.msg} "
                            f"(each line of a JSONL file must be one JSON object)") from err
        if not isinstance(obj, dict):
            raise DataError(f"{src}:{i}: expected a JSON object, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        table.rows.append({k: plain(v) for k, v in obj.items()})  # a bare NaN is missing, as in .json files
        table.locations.append(f"{src}:{i}")
    table.columns = list(columns)
    return table


def _read_json(text: str, src: str) -> RawTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if "\n{" in text.strip():  # several objects, one a line: JSON Lines with a .json name
            return _read_jsonl(text, src)
        raise DataError(f"{src}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(data, list):
        raise DataError(f"{src}: expected a JSON list of objects, got {type(data).__name__}")
    return table_from_records(data, src, location="item {}")


def _read_parquet(path: Path) -> RawTable:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(f'reading {path.name} needs pyarrow: pip install "finetune_lib[parquet]"') from err
    return table_from_records(pq.read_table(path).to_pylist(), str(path), location="row {}")


# --------------------------------------------------------------------------- in-memory sources


def plain(value: Any) -> Any:
    """A numpy/pandas scalar as a Python one; NaN and pandas' NA/NaT as None."""
    if value is None:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def table_from_records(records: Any, source: str = "records", location: str = "record {}") -> RawTable:
    """A table from an iterable of mappings; ``location`` formats the 0-based position."""
    table = RawTable([], [], [], source)
    columns: dict[Any, None] = {}
    for i, rec in enumerate(records):
        if not hasattr(rec, "keys"):
            raise DataError(f"{source}: {location.format(i)} is a {type(rec).__name__}, expected a dict")
        row = {k: plain(v) for k, v in rec.items()}
        columns.update(dict.fromkeys(row))
        table.rows.append(row)
        table.locations.append(f"{source}: {location.format(i)}")
    table.columns = list(columns)
    return table


def table_from_dataframe(df: Any, source: str = "DataFrame") -> RawTable:
    """A table from a pandas DataFrame (locations name the index label)."""
    if not hasattr(df, "to_dict") or not hasattr(df, "columns"):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    table = table_from_records(df.to_dict("records"), source, location="row {}")
    table.columns = list(df.columns)
    table.locations = [f"{source}: row {i} (index {idx!r})" for i, idx in enumerate(df.index)]
    return table


def _is_class_label(feature: Any) -> bool:
    return hasattr(feature, "int2str") and isinstance(getattr(feature, "names", None), list)


def _label_decoder(feature: Any) -> Any:
    """A function that turns a column's stored class ids into their names, or None when the column holds
    no ``ClassLabel``: a ``ClassLabel``, a list of them (``Sequence``/``List``/``LargeList``), or a struct
    (dict) with such fields. The id -1 (``datasets``' "no label") becomes None."""
    if _is_class_label(feature):
        names = list(feature.names)

        def name(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int):
                return value
            if value == -1:
                return None
            return names[value] if 0 <= value < len(names) else value

        return name
    if isinstance(feature, dict):
        fields = {key: _label_decoder(sub) for key, sub in feature.items()}
        fields = {key: f for key, f in fields.items() if f is not None}
        if not fields:
            return None
        return lambda value: ({k: fields[k](v) if k in fields else v for k, v in value.items()}
                              if isinstance(value, dict) else value)
    inner = getattr(feature, "feature", None)
    if inner is None or feature is inner:
        return None
    decode = _label_decoder(inner)
    if decode is None:
        return None

    def each(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [decode(v) for v in value]
        if isinstance(value, dict) and isinstance(inner, dict):  # datasets < 4: a Sequence of a struct
            fields = {k: _label_decoder(sub) for k, sub in inner.items()}  # is read as a struct of lists
            return {k: [fields[k](x) for x in v] if fields.get(k) and isinstance(v, list) else v
                    for k, v in value.items()}
        return value

    return each


def class_label_names(dataset: Any) -> dict[str, list[str]]:
    """``{column: names}`` for the ``ClassLabel`` columns of a ``datasets.Dataset`` (also inside a
    ``Sequence``/``List``), in id order; empty without ``features``."""
    out: dict[str, list[str]] = {}
    for column, feature in (getattr(dataset, "features", None) or {}).items():
        while not _is_class_label(feature) and getattr(feature, "feature", None) is not None:
            feature = feature.feature
        if _is_class_label(feature):
            out[column] = list(feature.names)
    return out


def table_from_hf(dataset: Any, source: str = "datasets.Dataset") -> RawTable:
    """A table from a Hugging Face ``datasets.Dataset`` (duck-typed: ``column_names`` + iteration).

    Columns typed ``ClassLabel`` (and lists of them, ``Sequence(ClassLabel)``) hold class ids in the
    Arrow table; they are read as their names (``"positive"``, not ``1``), so a model trained on them
    predicts names. The id -1 (``datasets``' "no label", e.g. unlabeled test splits) reads as empty, and
    such rows are dropped and counted like other empty labels.
    """
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):
        raise TypeError(f"got a DatasetDict with splits {list(names)}; pass one split, e.g. dataset['train']")
    if names is None:
        raise TypeError(f"expected a datasets.Dataset (with column_names), got {type(dataset).__name__}")
    features = getattr(dataset, "features", None) or {}
    decoders = {column: d for column, d in ((c, _label_decoder(f)) for c, f in features.items()) if d is not None}
    rows = iter(dataset)
    if decoders:
        rows = ({k: decoders[k](v) if k in decoders else v for k, v in row.items()} for row in rows)
    table = table_from_records(rows, source, location="row {}")
    table.columns = list(names)
    return table
