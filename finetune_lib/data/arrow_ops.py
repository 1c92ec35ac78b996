"""Deduplication and the leakage check on columns: 64-bit text hashes in numpy, no Python records.

The same definitions as :mod:`finetune_lib.data.dedup` (which works on lists of dicts), and the same
results: a record's key (``text``, or ``prompt`` + ``target``) and its normalized form
(:func:`~finetune_lib.data.dedup.normalize_for_dedup`) are hashed in batches with BLAKE2b (8 bytes),
then grouped with ``numpy.unique`` / ``numpy.isin``. Two different texts share a 64-bit hash with
probability about n²/2⁶⁵ (10⁻⁶ at 10M records); such a pair would count as a duplicate.

Near duplicates (``near=True``) reuse :func:`~finetune_lib.data.dedup.near_duplicate_pairs` (MinHash
LSH banding, each candidate verified by its exact character n-gram Jaccard) over the normalized
texts of the records left after exact and normalized deduplication: those texts (not the records)
are held in memory.

Example:
    >>> recs = ArrowRecords(datasets.Dataset.from_list([{"text": "Hi!"}, {"text": "hi"}]))   # doctest: +SKIP
    >>> kept, counts = deduplicate(recs)                                                     # doctest: +SKIP
    >>> len(kept), counts["normalized"]                                                      # doctest: +SKIP
    (1, 1)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import dedup as _dedup
from .arrow_records import ArrowRecords, import_datasets
from .dedup import LeakageReport, normalize_for_dedup
from .records import record_key

__all__ = ["deduplicate", "find_leakage", "key_hashes", "leaked_indices"]

BATCH = 65536


def _keys(records: Sequence[Mapping[str, Any]] | ArrowRecords) -> Iterator[list[str]]:
    """Each record's key (see :func:`~finetune_lib.data.records.record_key`), a batch at a time."""
    if isinstance(records, ArrowRecords):
        columns = records.columns
        if "messages" not in columns and "tokens" not in columns:
            if "text" in columns:
                for batch in records.iter_column("text", BATCH):
                    yield [str(t) for t in batch]
                return
            if "prompt" in columns or "target" in columns:
                empty = [[None] * min(BATCH, len(records) - s) for s in range(0, len(records), BATCH)]
                prompts = records.iter_column("prompt", BATCH) if "prompt" in columns else iter(empty)
                targets = records.iter_column("target", BATCH) if "target" in columns else iter(empty)
                for ps, ts in zip(prompts, targets, strict=True):
                    yield [f"{p or ''}\x1f{t or ''}" for p, t in zip(ps, ts, strict=True)]
                return
        batch: list[str] = []
        for record in records:  # conversations, token classification: the general key, row by row
            batch.append(record_key(record))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    for start in range(0, len(records), BATCH):
        yield [record_key(records[i]) for i in range(start, min(start + BATCH, len(records)))]


def _hash(texts: Sequence[str]) -> np.ndarray:
    digest = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digest, dtype=np.uint64)


def key_hashes(records: Sequence[Mapping[str, Any]] | ArrowRecords, normalized: bool = True
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """64-bit hashes of each record's key and (with ``normalized``) of its normalized key."""
    exact: list[np.ndarray] = []
    norm: list[np.ndarray] = []
    for batch in _keys(records):
        exact.append(_hash(batch))
        if normalized:
            norm.append(_hash([normalize_for_dedup(k) for k in batch]))
    empty = np.zeros(0, dtype=np.uint64)
    return (np.concatenate(exact) if exact else empty,
            (np.concatenate(norm) if norm else empty) if normalized else None)


def _group_roots(hashes: np.ndarray) -> np.ndarray:
    """For each row, the first row with the same hash."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


def _normalized_texts(records: ArrowRecords | Sequence[Mapping[str, Any]], rows: np.ndarray) -> list[str]:
    part = records.select(rows) if isinstance(records, ArrowRecords) else [records[i] for i in rows.tolist()]
    return [normalize_for_dedup(k) for batch in _keys(part) for k in batch]


def deduplicate(records: ArrowRecords, normalized: bool = True, near: bool = False, threshold: float = 0.9,
                ngram: int = 5) -> tuple[ArrowRecords, dict[str, int]]:
    """:func:`finetune_lib.data.dedup.deduplicate` on columns: the kept records (first occurrences, in
    order, majority label) as ``ArrowRecords``, and ``{"exact", "normalized", "near", "label_conflicts"}``."""
    n = len(records)
    exact, norm = key_hashes(records, normalized=normalized)
    root = _group_roots(exact)
    counts = {"exact": int(n - np.count_nonzero(root == np.arange(n))), "normalized": 0, "near": 0}
    if normalized and norm is not None:
        norm_root = _group_roots(norm)  # an exact group lies inside one normalized group
        counts["normalized"] = int(np.count_nonzero(root == np.arange(n)) - np.count_nonzero(norm_root == np.arange(n)))
        root = norm_root
    if near:
        roots = np.flatnonzero(root == np.arange(n))
        clusters = _dedup._Clusters(len(roots))
        for a, b, _ in _dedup.near_duplicate_pairs(_normalized_texts(records, roots), threshold=threshold,
                                                   ngram=ngram):
            counts["near"] += clusters.union(a, b)
        near_root = roots[[clusters.find(i) for i in range(len(roots))]]
        root = near_root[np.searchsorted(roots, root)]
    kept = np.flatnonzero(root == np.arange(n))
    changes, counts["label_conflicts"] = _majority_labels(records, root)
    if changes:
        records = _set_labels(records, changes)
    return records.select(kept), counts


def _majority_labels(records: ArrowRecords, root: np.ndarray) -> tuple[dict[int, Any], int]:
    """``{kept row: majority label}`` where it differs from the row's own, and the number of conflicting groups."""
    if "label" not in records.columns:
        return {}, 0
    sizes = np.bincount(root, minlength=len(root))
    rows = np.flatnonzero(sizes[root] > 1)
    if not len(rows):
        return {}, 0
    rows = rows[np.argsort(root[rows], kind="stable")]
    labels = records.arrow_column("label").take(rows).to_pylist()
    bounds = np.flatnonzero(np.diff(root[rows])) + 1
    changes: dict[int, Any] = {}
    conflicts = 0
    for members in np.split(np.arange(len(rows)), bounds):
        group = [labels[i] for i in members.tolist() if labels[i] is not None]
        keys = [_dedup._label_key(label) for label in group]
        if len(set(keys)) <= 1:
            continue
        conflicts += 1
        tally = Counter(keys)
        top = max(tally.values())
        majority = next(label for label, key in zip(group, keys, strict=True) if tally[key] == top)
        if majority != labels[members[0]]:  # the group's first row is the kept one
            changes[int(rows[members[0]])] = majority
    return changes, conflicts


def _set_labels(records: ArrowRecords, changes: Mapping[int, Any]) -> ArrowRecords:
    """The records with ``label`` replaced at some rows (one new column; the index map is kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    datasets = import_datasets()
    ds = records.dataset
    table = ds.data
    indices = getattr(ds, "_indices", None)
    rows = np.array(sorted(changes), dtype=np.int64)
    where = indices.column(0).to_numpy()[rows] if indices is not None else rows
    order = np.argsort(where)
    column = table.column("label").combine_chunks()
    mask = np.zeros(len(column), dtype=bool)
    mask[where] = True
    values = pa.array([changes[int(r)] for r in rows[order]], type=column.type)
    new = pc.replace_with_mask(column, pa.array(mask), values)
    i = table.column_names.index("label")
    try:
        try:
            new_table = table.set_column(i, table.schema.field(i), pa.chunked_array([new]))
        except NotImplementedError:  # a table over several files (ConcatenationTable): the new column beside them
            from datasets.table import InMemoryTable, concat_tables

            new_table = concat_tables([table.remove_column(i), InMemoryTable(pa.table({"label": new}))],
                                      axis=1).select(table.column_names)
        return ArrowRecords(datasets.Dataset(new_table, info=ds.info.copy(), split=ds.split, indices_table=indices),
                            name=records.name)
    except (TypeError, AttributeError):  # pragma: no cover - a datasets release with another Table API
        full = ArrowRecords(ds.flatten_indices(), name=records.name)
        current = full.arrow_column("label").combine_chunks()
        mask = np.zeros(len(current), dtype=bool)
        mask[rows] = True
        new = pc.replace_with_mask(current, pa.array(mask), pa.array([changes[int(r)] for r in rows], current.type))
        return ArrowRecords(full.dataset.remove_columns("label").add_column("label", new), name=records.name)


# --------------------------------------------------------------------------- leakage between splits


def leaked_indices(parts: Mapping[str, Sequence[Mapping[str, Any]] | ArrowRecords], near: bool = False,
                   threshold: float = 0.9) -> dict[tuple[str, str], dict[int, str]]:
    """:func:`finetune_lib.data.dedup.leaked_indices` on hashes when a part is ``ArrowRecords``."""
    if not any(isinstance(p, ArrowRecords) for p in parts.values()):
        return _dedup.leaked_indices(parts, near=near, threshold=threshold)  # type: ignore[arg-type]
    names = list(parts)
    hashes = {name: key_hashes(parts[name]) for name in names}
    near_hits: dict[tuple[str, str], set[int]] = {}
    if near:
        owner = [(name, i) for name in names for i in range(len(parts[name]))]
        flat = [t for name in names for t in _normalized_texts(parts[name], np.arange(len(parts[name])))]
        for a, b, _ in _dedup.near_duplicate_pairs(flat, threshold=threshold):
            (na, ia), (nb, ib) = owner[a], owner[b]
            if na != nb:
                early, late, li = (na, nb, ib) if names.index(na) < names.index(nb) else (nb, na, ia)
                near_hits.setdefault((early, late), set()).add(li)
    out: dict[tuple[str, str], dict[int, str]] = {}
    for x, early in enumerate(names):
        exact_early, norm_early = (np.sort(h) for h in hashes[early])  # sorted once, searched by each later part
        for late in names[x + 1 :]:
            exact_late, norm_late = hashes[late]
            kind = np.zeros(len(exact_late), dtype=np.int8)
            kind[_member(norm_late, norm_early)] = 2
            kind[_member(exact_late, exact_early)] = 1
            for i in near_hits.get((early, late), ()):
                if not kind[i]:
                    kind[i] = 3
            out[(early, late)] = {int(i): ("", "exact", "normalized", "near")[kind[i]] for i in np.flatnonzero(kind)}
    return out


def _member(values: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """``numpy.isin(values, sorted_pool)`` for a sorted pool (a binary search; the pool is not sorted again)."""
    if not len(sorted_pool):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_pool, values), len(sorted_pool) - 1)
    return sorted_pool[at] == values


def find_leakage(parts: Mapping[str, Sequence[Mapping[str, Any]] | ArrowRecords], near: bool = False,
                 threshold: float = 0.9, max_examples: int = 3) -> LeakageReport:
    """:func:`finetune_lib.data.dedup.find_leakage` for parts that may be ``ArrowRecords``."""
    if not any(isinstance(p, ArrowRecords) for p in parts.values()):
        return _dedup.find_leakage(parts, near=near, threshold=threshold,  # type: ignore[arg-type]
                                   max_examples=max_examples)
    return _dedup.leakage_report(parts, leaked_indices(parts, near=near, threshold=threshold), max_examples)
