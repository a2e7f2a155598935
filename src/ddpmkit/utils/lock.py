"""An exclusive lock on an output folder, so that two runs never write the same folder at once."""

import contextlib
import os
import socket
from pathlib import Path

import filelock

LOCK_NAME = ".ddpmkit.lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock; the message names it."""


class FolderLock:
    """``filelock.FileLock`` on ``folder/.ddpmkit.lock``, taken without waiting.

    The operating system releases the lock when its process dies, so a crashed run's lock never sticks. The lock
    file records its holder (``pid@host``) for the message a second run gets."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            holder = _read_holder(self.path) or "another process"
            raise FolderInUseError(
                f"output_dir {str(self.path.parent)!r} is in use by another training run ({holder}); wait for it to "
                "finish or choose another --output_dir"
            ) from None
        self.path.write_text(f"{os.getpid()}@{socket.gethostname()}")  # the lock file itself, not a new file
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._lock.release()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: Path) -> str:
    try:
        return path.read_text()[:200].strip()
    except OSError:
        return ""
