"""Split indices: random, stratified (single- and multi-label) and grouped, on values or columns.

``DatasetBuilder.split`` uses these for both storages: plain ``Records`` (values read per record) and
:class:`~finetune_lib.data.arrow_records.ArrowRecords` (labels and groups read as whole columns, no
Python records). Both give the same indices for the same data and seed.

Example:
    >>> index = stratified_index(["a", "a", "b", "b", "a", "b"], {"validation": 2, "test": 0}, seed=0)
    >>> sorted(len(v) for v in index.values())
    [0, 2, 4]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arrow_records import ArrowRecords
from .records import Records
from .values import DataError

__all__ = ["count", "group_members", "grouped_index", "label_values", "group_values", "round_table",
           "stratified_index", "take"]


def count(value: float | int, n: int, name: str) -> int:
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


def label_values(records: Sequence[Mapping[str, Any]] | ArrowRecords) -> Sequence[Any]:
    """The label of every record (a numpy array for an Arrow column of numbers), or a ``DataError``."""
    if isinstance(records, ArrowRecords):
        if "label" not in records.columns:
            raise DataError("stratify=True needs a label in every record; load with label=<column>")
        labels = records.column("label")
        if not isinstance(labels, np.ndarray) and any(label is None for label in labels):
            raise DataError("stratify=True needs a label in every record; load with label=<column>")
        return labels
    labels = [r.get("label") for r in records]
    if any(label is None for label in labels) and any("tags" in r or "spans" in r for r in records):
        raise DataError("stratify=True keeps each label's share, and token classification records have a tag per "
                        "word, not one label per record: split with stratify=False, or give each record a 'label' "
                        "to stratify on (e.g. its most frequent entity type; training ignores it)")
    if any(label is None for label in labels):
        raise DataError("stratify=True needs a label in every record; load with label=<column>")
    return labels


def group_values(records: Sequence[Mapping[str, Any]] | ArrowRecords, key: str) -> Sequence[Any]:
    """The ``key`` of every record, as group codes in first-seen order for an Arrow column, or a ``DataError``."""
    if isinstance(records, ArrowRecords):
        if key not in records.columns:
            raise DataError(f"group={key!r}: no column {key!r} (columns: {records.columns}); load with "
                            "group=<column>")
        col = records.arrow_column(key).combine_chunks()
        if col.null_count:
            first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"group={key!r}: record {first} has no {key!r}; load with group=<column>")
        return col.dictionary_encode().indices.to_numpy(zero_copy_only=False)
    values = []
    for i, record in enumerate(records):
        if record.get(key) is None:
            raise DataError(f"group={key!r}: record {i} has no {key!r}; load with group=<column>")
        values.append(record[key])
    return values


def group_members(values: Sequence[Any]) -> list[np.ndarray]:
    """The indices holding each distinct value (values in first-seen order, indices ascending)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(first)))[:-1])
        return [groups[k] for k in np.argsort(first, kind="stable")]
    members: dict[Any, list[int]] = {}
    for i, value in enumerate(values):
        members.setdefault(value, []).append(i)
    return [np.asarray(m, dtype=np.int64) for m in members.values()]


def stratified_index(labels: Sequence[Any], sizes: Mapping[str, int], seed: int) -> dict[str, Any]:
    """Indices of train / validation / test keeping each class's share (multi-label: each label's share)."""
    n = len(labels)
    is_array = isinstance(labels, np.ndarray) and labels.dtype != object
    if not is_array and any(isinstance(v, (list, tuple)) for v in labels):  # multi-label: keep each label's share
        from .multilabel_split import iterative_stratification

        if not all(isinstance(v, (list, tuple)) for v in labels):
            raise DataError("stratify=True: some labels are lists (multi-label) and some are not; make every label "
                            "a list of label names, e.g. ['sports'] for a single label")
        parts = iterative_stratification(labels, [sizes["test"], sizes["validation"],
                                                  n - sizes["test"] - sizes["validation"]], seed)
        return dict(zip(("test", "validation", "train"), parts, strict=True))
    if (np.any(labels != np.floor(labels)) if is_array and labels.dtype.kind == "f"
            else not is_array and any(isinstance(v, float) and not v.is_integer() for v in labels)):
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
    members = group_members(labels)
    totals = [sizes["test"], sizes["validation"], n - sizes["test"] - sizes["validation"]]
    rng = np.random.default_rng(seed)
    table = round_table(np.array([len(m) for m in members]), np.array(totals), rng)
    index: dict[str, list[np.ndarray]] = {"test": [], "validation": [], "train": []}
    for m, row in zip(members, table, strict=True):
        idx = rng.permutation(m)
        index["test"].append(idx[: row[0]])
        index["validation"].append(idx[row[0] : row[0] + row[1]])
        index["train"].append(idx[row[0] + row[1] :])
    return {name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for name, parts in index.items()}


def round_table(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def grouped_index(members: Sequence[np.ndarray], sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Whole groups (``members[g]``: the indices of group g) to train / validation / test, near the sizes."""
    rng = np.random.default_rng(seed)
    index: dict[str, list[np.ndarray]] = {"test": [], "validation": [], "train": []}
    have = {"test": 0, "validation": 0, "train": 0}
    assigned: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    for g in rng.permutation(len(members)).tolist():
        size = len(members[g])
        for name in ("test", "validation"):
            want = sizes[name]
            if have[name] < want and have[name] + size - want <= want - have[name]:  # taking it gets closer
                break
        else:
            name = "train"
        index[name].append(members[g])
        have[name] += size
        assigned[name].append(g)
    out = {name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for name, parts in index.items()}
    for name in ("test", "validation"):  # a requested split that no group fitted: take the smallest one
        if sizes[name] and not have[name] and len(assigned["train"]) > 1:
            g = min(assigned["train"], key=lambda x: len(members[x]))
            assigned["train"].remove(g)
            out["train"] = out["train"][~np.isin(out["train"], members[g])]
            out[name] = members[g]
    return out


def take(records: Sequence[dict[str, Any]] | ArrowRecords, indices: Any, name: str) -> Records | ArrowRecords:
    """The records at ``indices``, in record order, as the same storage (named ``name``)."""
    order = np.sort(np.asarray(indices, dtype=np.int64))
    if isinstance(records, ArrowRecords):
        return records.select(order, name=name)
    return Records((records[i] for i in order.tolist()), name=name)
