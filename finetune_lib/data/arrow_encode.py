"""`Preprocessor.encode` for Arrow-backed records: chunked, in `num_proc` processes, through the cache.

The records are read a chunk at a time (`CHUNK` rows, column-wise), encoded by the list path's own
encoders (so every feature equals the list path's), and written as Arrow record batches; the result
is memory-mapped (`finetune_lib.data.arrow_features.ArrowFeatures`). With `num_proc > 1` the rows are
cut into `num_proc` contiguous shards, each encoded by a forked worker into its own file; the files
are read back in order, so the features are the same as with one process.

The files live in the tokenization cache (`finetune_lib.data.encode_cache`); under torchrun rank 0
fills it while the other ranks wait at a barrier, then they read it. With the cache off
(`cache_dir=False`, or a cleaning step whose source cannot be read) the files go to a temporary
folder that is deleted at once: the memory map keeps them readable until the features are dropped.

Example:
    >>> pre = Preprocessor(num_proc=2).setup(tokenizer, "classification", dataset)
    >>> features = pre.encode(dataset, "train")     # ArrowFeatures, cached under ~/.cache/finetune_lib
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .arrow_data import hf_dataset, record_chunks
from .arrow_features import ArrowFeatures, ShardWriter, feature_schema, features_to_batch, open_features
from .encode_cache import CacheEntry, cache_root, encode_key
from .encode_stats import EncodeStats

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "encode_arrow"]

#: records encoded (and written as one record batch) at a time
CHUNK = 10_000
#: fewer rows than this per process are not worth a worker
MIN_ROWS_PER_PROCESS = 2_000

_JOB: tuple[Any, ...] | None = None  # what forked workers read (set just before forking)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return td.get_rank(), td.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()


def encode_arrow(pre: Any, records: Any, split: str, limit: int | None, label_kind: str | None) -> ArrowFeatures:
    """Encode Arrow-backed `records` with the set-up Preprocessor `pre`, through its cache.

    Sets `pre.stats[split]` (read back from the cache on a hit). `label_kind` is the task's
    (`Task.label_kind`; None for generation).
    """
    root = cache_root(getattr(pre, "cache_dir", None))
    key = encode_key(pre, records, limit) if root is not None else None
    if root is not None and key is None:
        log.info("%s: a cleaning step's source cannot be read, so its output cannot be keyed; tokenizing "
                 "without the cache.", split)
    rank, world = _rank_world()
    found = None
    if key is not None:
        entry = CacheEntry(root, key)  # type: ignore[arg-type]
        if rank == 0:
            found = entry.load()
            if found is None:
                found = _build_entry(pre, records, split, limit, label_kind, entry)
            else:
                log.info("%s: %d tokenized examples read from the cache (%s).", split, len(found[0]), entry.path)
        _barrier()  # rank 0 has filled the cache; the others read it
        if rank != 0:
            found = entry.load()
    if found is None:  # no cache, or it could not be written or read
        found = _build_temporary(pre, records, split, limit, label_kind)
    features, stats = found
    pre.stats[split] = stats
    return features


def _build_entry(pre: Any, records: Any, split: str, limit: int | None, label_kind: str | None,
                 entry: CacheEntry) -> tuple[ArrowFeatures, EncodeStats] | None:
    try:
        staging = entry.staging()
    except OSError as error:
        log.warning("The tokenization cache folder %s cannot be written (%s); tokenizing without it. Set "
                    "Preprocessor(cache_dir=...) or $FINETUNE_LIB_CACHE to a writable folder.", entry.root, error)
        return None
    try:
        names, rows, stats = _encode_files(pre, records, split, limit, label_kind, staging)
        entry.commit(staging, names, rows, stats)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s: %d tokenized examples written to the cache (%s).", split, rows, entry.path)
    return entry.load()


def _build_temporary(pre: Any, records: Any, split: str, limit: int | None,
                     label_kind: str | None) -> tuple[ArrowFeatures, EncodeStats]:
    folder = Path(tempfile.mkdtemp(prefix="finetune_lib-tokenized-"))
    try:
        names, _, stats = _encode_files(pre, records, split, limit, label_kind, folder)
        features = open_features([folder / n for n in names])
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the memory map keeps the data readable
    return features, stats


def _encode_files(pre: Any, records: Any, split: str, limit: int | None, label_kind: str | None,
                  folder: Path) -> tuple[list[str], int, EncodeStats]:
    """Encode all rows into Arrow files in `folder`: `(file names in order, rows, statistics)`."""
    n = len(hf_dataset(records))
    procs = max(1, min(int(getattr(pre, "num_proc", 1) or 1), n // MIN_ROWS_PER_PROCESS))
    if procs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        log.warning("num_proc=%d needs the 'fork' start method, which this platform lacks; tokenizing in one "
                    "process.", procs)
        procs = 1
    schema = feature_schema(pre.task, label_kind, len(pre.tokenizer))
    bounds = [(k * n // procs, (k + 1) * n // procs) for k in range(procs)]
    names = [f"data-{k:05d}-of-{procs:05d}.arrow" for k in range(procs)]
    job = (pre, records, split, limit, bounds, names, folder, schema)
    if procs == 1:
        results = [_encode_shard(job, 0)]
    else:
        global _JOB
        _JOB = job
        _release_free_memory()  # the workers start from a copy of this process: give it only what is in use
        try:
            with multiprocessing.get_context("fork").Pool(procs) as pool:
                results = pool.map(_work, range(procs))
        finally:
            _JOB = None
    stats = EncodeStats()
    for (start, _), (_, shard) in zip(bounds, results):
        _merge(stats, shard, start)
    return names, sum(rows for rows, _ in results), stats


def _release_free_memory() -> None:
    """Collect garbage and hand free memory back to the system (Arrow's memory pool, glibc's `malloc_trim`), so
    that the forked workers do not start with the parent's freed memory counted in their resident size."""
    import gc

    import pyarrow as pa

    from ..speedups.malloc import trim_free_memory

    gc.collect()
    pa.default_memory_pool().release_unused()  # whole columns taken for hashing, checks, ... (mimalloc keeps them)
    trim_free_memory()  # one malloc_trim; glibc's settings are not touched


def _work(k: int) -> tuple[int, EncodeStats]:
    assert _JOB is not None
    return _encode_shard(_JOB, k)


def _encode_shard(job: tuple[Any, ...], k: int) -> tuple[int, EncodeStats]:
    """Encode shard `k` of the job into its file, a chunk at a time: `(rows, statistics)`."""
    pre, records, split, limit, bounds, names, folder, schema = job
    start, stop = bounds[k]
    stats = EncodeStats()
    with ShardWriter(folder / names[k], schema) as writer:
        for first, chunk in record_chunks(records, CHUNK, start, stop):
            try:
                features = pre._encode_records(chunk, split, limit)
            except ValueError as error:
                raise ValueError(f"{error} (Record numbers count from row {first} of the {split} data.)") from error
            writer.write(features_to_batch(features, schema))
            _merge(stats, pre.stats[split], first - start)
        rows = writer.rows
    return rows, stats


def _merge(total: EncodeStats, part: EncodeStats, offset: int) -> None:
    """Add a chunk's statistics (its indices counted from `offset`) to `total`."""
    total.examples += part.examples
    total.truncated += part.truncated
    room = 100 - len(total.truncated_indices)
    total.truncated_indices += [i + offset for i in part.truncated_indices[:max(room, 0)]]
    total.conversations_shortened += part.conversations_shortened
    total.dropped_turns += part.dropped_turns
