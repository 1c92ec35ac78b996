"""The tokenization cache: tokenized Arrow tables on disk, keyed by what made them.

`Preprocessor.encode` on Arrow-backed records looks here first (`finetune_lib.data.arrow_encode`).
An entry is a folder `<cache dir>/<key>/` holding the Arrow IPC files of the features and
`meta.json` (the key, the format version, each file's size, rows and xxh64 checksum, the encode
statistics). The key is a hash of:

- the data: the `datasets` fingerprint of a dataset read from files (its cache files' paths and
  times, and the transforms applied), or a hash of the Arrow buffers of an in-memory table;
- the tokenizer: its `tokenizer.json` (truncation and padding state left out), class, special tokens,
  chat template, padding and truncation sides (a slow tokenizer: the hash of its saved files);
- every `Preprocessor` setting that changes the features (`settings_fingerprint`), the task and the
  label mapping, and the source of the modules that encode (so an upgrade never reads stale features);
- `FORMAT_VERSION`.

The cache folder is `Preprocessor(cache_dir=...)`, else `$FINETUNE_LIB_CACHE`, else
`~/.cache/finetune_lib/tokenized`; `cache_dir=False` turns the cache off. Entries are written to a
temporary folder and renamed into place, so a reader never sees half an entry; an entry that does
not check out (missing or truncated file, checksum, wrong key or version in its metadata,
unreadable) is logged, removed and rebuilt, never used.

Example:
    >>> pre = Preprocessor(cache_dir="/data/cache")
    >>> features = pre.setup(tok, "classification", ds).encode(ds)   # tokenizes, writes the entry
    >>> features = pre.encode(ds)                                      # reads it back: no tokenizing
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .arrow_data import hf_dataset
from .arrow_features import ArrowFeatures, open_features
from .encode_stats import EncodeStats

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "CacheEntry", "cache_root", "data_fingerprint", "encode_key", "settings_fingerprint",
           "tokenizer_fingerprint"]

#: raise when the stored form of features changes
FORMAT_VERSION = 1
ENV = "FINETUNE_LIB_CACHE"
META = "meta.json"
#: modules whose code decides the features: their source is part of the key
ENCODING_MODULES = ("preprocessor.py", "chat.py", "token_labels.py", "cleaning.py", "arrow_features.py",
                    "arrow_encode.py", "collate.py")


def cache_root(cache_dir: str | Path | bool | None) -> Path | None:
    """The cache folder: `cache_dir`, else `$FINETUNE_LIB_CACHE`, else `~/.cache/finetune_lib/tokenized`;
    None when `cache_dir` is False."""
    if cache_dir is False:
        return None
    if cache_dir is not None and cache_dir is not True:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "finetune_lib" / "tokenized"


def _xxh(data: bytes | memoryview | None = None) -> Any:
    try:
        import xxhash

        h = xxhash.xxh64()
    except ImportError:  # datasets depends on xxhash; blake2b otherwise
        h = hashlib.blake2b(digest_size=8)
    if data is not None:
        h.update(data)
    return h


def data_fingerprint(data: Any) -> str:
    """A fingerprint of Arrow-backed records: `datasets`' own for data read from files, else a hash of
    the table's buffers and of the selection of rows (`select`, `shuffle`, ...) over it."""
    ds = hf_dataset(data)
    if ds.cache_files:
        return f"datasets:{ds._fingerprint}"
    h = _xxh()
    tables = [ds.data.table] + ([ds._indices.table] if getattr(ds, "_indices", None) is not None else [])
    for table in tables:
        h.update(str(table.schema).encode())
        for column in table.columns:
            for chunk in column.chunks:
                h.update(f"{chunk.offset}:{len(chunk)}".encode())
                for buf in chunk.buffers():
                    h.update(b"-" if buf is None else memoryview(buf))
    return f"table:{h.hexdigest()}"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what makes a tokenizer's output: its `tokenizer.json` (the backend's truncation and
    padding state left out), class, special tokens, chat template and sides."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:  # a slow tokenizer: the files it saves
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    h.update(path.name.encode() + path.read_bytes())
    extra = {"class": type(tokenizer).__name__, "special": getattr(tokenizer, "special_tokens_map", {}),
             "chat_template": getattr(tokenizer, "chat_template", None),
             "padding_side": getattr(tokenizer, "padding_side", None),
             "truncation_side": getattr(tokenizer, "truncation_side", None),
             "bos": getattr(tokenizer, "add_bos_token", None), "eos": getattr(tokenizer, "add_eos_token", None),
             "size": len(tokenizer)}
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _callable_fingerprint(step: Callable[..., Any]) -> str | None:
    """Module, name and source of a cleaning step; None when its source cannot be read."""
    try:
        source = inspect.getsource(step)
    except (OSError, TypeError):
        return None
    name = f"{getattr(step, '__module__', '')}.{getattr(step, '__qualname__', type(step).__name__)}"
    return name + ":" + hashlib.sha256(source.encode()).hexdigest()


def settings_fingerprint(pre: Any, limit: int | None) -> dict[str, Any] | None:
    """Every Preprocessor setting that changes the features, as JSON-able values; None when a cleaning
    step is a callable whose source cannot be read (the cache is then skipped).

    `batch_size`, `num_proc` and `cache_dir` change how encoding runs, not its output, and are left out.
    """
    from .cleaning import STEPS

    clean: list[str] = []
    for step in pre.clean_steps:
        fn = STEPS.get(step) if isinstance(step, str) else step
        found = _callable_fingerprint(fn) if callable(fn) else None
        if found is None:
            return None
        clean.append(f"{step}={found}" if isinstance(step, str) else found)
    return {"format": FORMAT_VERSION, "task": pre.task, "max_length": pre.max_length, "limit": limit,
            "strict": pre.strict, "prompt_template": pre.prompt_template, "use_chat_template": pre.use_chat_template,
            "chat_template": pre.chat_template, "train_on": pre.train_on, "label_all_subtokens": pre.label_all_subtokens,
            "pack": pre.pack, "pack_length": pre.pack_length, "clean": clean,
            "labels": None if pre.label_names is None else [repr(n) for n in pre.label_names],
            "label2id": sorted((repr(k), v) for k, v in pre.label2id.items())}


_SOURCE_HASH: list[str] = []


def _source_hash() -> str:
    if not _SOURCE_HASH:
        h = hashlib.sha256()
        here = Path(__file__).parent
        for name in ENCODING_MODULES:
            path = here / name
            h.update(path.read_bytes() if path.exists() else name.encode())
        _SOURCE_HASH.append(h.hexdigest()[:16])
    return _SOURCE_HASH[0]


def encode_key(pre: Any, data: Any, limit: int | None) -> str | None:
    """The cache key of encoding `data` with `pre` (set up), or None when it cannot be keyed."""
    settings = settings_fingerprint(pre, limit)
    if settings is None:
        return None
    parts = {"settings": settings, "data": data_fingerprint(data), "tokenizer": tokenizer_fingerprint(pre.tokenizer),
             "code": _source_hash()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _checksum(path: Path) -> str:
    h = _xxh()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


class CacheEntry:
    """One entry of the cache: `load()` it, or `write(build)` it atomically.

    Args:
        root: the cache folder.
        key: the entry's key (`encode_key`).
    """

    def __init__(self, root: Path, key: str):
        self.root, self.key = Path(root), key
        self.path = self.root / key

    def load(self) -> tuple[ArrowFeatures, EncodeStats] | None:
        """The features and statistics stored, or None (missing; or corrupt: logged and removed)."""
        if not self.path.exists():
            return None
        try:
            meta = json.loads((self.path / META).read_text())
            if meta.get("key") != self.key or meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"its metadata is for key {meta.get('key')!r}, format {meta.get('format')!r}")
            files = []
            for item in meta["files"]:
                path = self.path / item["name"]
                size = path.stat().st_size
                if size != item["bytes"]:
                    raise ValueError(f"{item['name']} has {size} bytes, not {item['bytes']} (truncated?)")
                if _checksum(path) != item["xxh64"]:
                    raise ValueError(f"{item['name']} does not match its checksum")
                files.append(path)
            features = open_features(files)
            if len(features) != meta["rows"]:
                raise ValueError(f"it holds {len(features)} rows, not {meta['rows']}")
            return features, EncodeStats(**meta["stats"])
        except Exception as error:  # noqa: BLE001 - any defect means: rebuild
            log.warning("The tokenization cache entry %s is corrupt (%s); it is removed and the data tokenized "
                        "again.", self.path, error)
            self.remove()
            return None

    def remove(self) -> None:
        """Delete the entry (renamed aside first, so a reader never sees it half deleted)."""
        if not self.path.exists():
            return
        trash = self.root / f".trash-{self.key}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def staging(self) -> Path:
        """A fresh temporary folder beside the entry, to write it in."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{self.key}-", dir=self.root))

    def commit(self, staging: Path, file_names: list[str], rows: int, stats: EncodeStats,
               extra: dict[str, Any] | None = None) -> None:
        """Write `meta.json` in `staging` and rename it to the entry (another writer's entry wins)."""
        files = [{"name": n, "bytes": (staging / n).stat().st_size, "xxh64": _checksum(staging / n)}
                 for n in file_names]
        meta = {"key": self.key, "format": FORMAT_VERSION, "rows": rows, "files": files, "stats": asdict(stats),
                **(extra or {})}
        (staging / META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(staging, self.path)
        except OSError:  # written meanwhile by another process: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
