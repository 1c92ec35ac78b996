"""One run at a time in a run folder: an OS lock on `<output_dir>/.lock`, held for the whole of `fit`.

Two processes training into one `output_dir` would write the same log steps twice and interleave
their checkpoints. `RunLock` takes an exclusive `fcntl.flock` on `<output_dir>/.lock`, which the
operating system drops when the process ends (a crash or `kill -9` leaves no stale lock), and writes
the holder into the file (process id, host, start time) so a refused run can say who holds it. Under
`torchrun` only rank 0 takes it. Where `fcntl` does not exist (Windows), nothing is locked.

Example:
    >>> with RunLock(Path("runs/a")):
    ...     ...  # train; a second RunLock(Path("runs/a")) raises RunLockedError meanwhile
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
F = TypeVar("F", bound=Callable[..., Any])


class RunLockedError(RuntimeError):
    """Another process (or another `fit` in this one) is training into the same `output_dir`."""


class RunLock:
    """An exclusive lock on a run folder, for the duration of a `with` block (or acquire/release).

    Args:
        output_dir: the run folder; created when missing (and removed again on release when the lock
            file was all it held). None: nothing to lock.
        enabled: False makes it a no-op (the processes other than rank 0 under torchrun).
    """

    def __init__(self, output_dir: Path | str | None, enabled: bool = True) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.enabled = enabled and self.output_dir is not None and fcntl is not None
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path | None:
        return self.output_dir / LOCK_FILE if self.output_dir is not None else None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise `RunLockedError` naming the holder. Never waits."""
        if not self.enabled or self._fd is not None:
            return self
        assert self.output_dir is not None and self.path is not None
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {self.output_dir} is a file, not a folder. Choose another path.")
        self._created = [p for p in (self.output_dir, *self.output_dir.parents) if not p.exists()]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._remove_created()
                raise RunLockedError(self._refusal()) from None
            # the holder before us may have removed the file between our open and our lock: lock the
            # file that is at the path now, or two runs would each hold a lock on a different file
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock and remove the lock file (and the folder, when the lock created it and it is empty)."""
        if self._fd is None:
            return
        assert self.path is not None
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still holding it, so no one takes a lock on a file being removed
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # innermost first; only folders this lock created, only when empty
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def _refusal(self) -> str:
        assert self.path is not None
        holder = read_holder(self.path)
        if holder:
            who = f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                who += " (this very process: another FineTuner's fit() is running into this folder)"
        else:
            who = "another process (it has not written its id yet)"
        return (f"output_dir {self.output_dir} is in use by another run: {who}. Two runs in one folder would "
                "write the same log steps twice and mix their checkpoints. Wait for that run to finish (or stop it), "
                f"or choose another output_dir. The lock ({self.path}) is dropped by the operating system when that "
                "process ends, so it is never stale.")

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any]:
    """Who holds the lock at `path`, as its holder wrote it ({} when unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holds_run_lock(fit: F) -> F:
    """Decorator for `FineTuner.fit`: the run folder (`self.output_dir`) is locked from before anything
    is checked or written until `fit` returns or raises; by rank 0 only under torchrun (`self.dist`)."""

    @functools.wraps(fit)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        dist = getattr(self, "dist", None)
        with RunLock(self.output_dir, enabled=getattr(dist, "is_main", True)):
            return fit(self, *args, **kwargs)

    return locked  # type: ignore[return-value]
