"""Files that must never be seen half-written, and locks that keep one process per directory.

One implementation of each, so every state file has the same durability and every lock the same
semantics:

- ``atomic_write(path, data)``: a reader sees the old content or the new, never a mix. The data
  goes to a temporary file in the same directory (a rename is atomic only within one file
  system), is fsynced, renamed over ``path``, and the directory is fsynced so the rename itself
  survives a power loss. ``durable=False`` skips both fsyncs (still atomic against a crash of
  the process, not of the machine). ``stage()`` splits the two halves for a caller that must
  check the written file before it replaces the old one (the admin policy API).
- ``exclusive_lock(path)``: a non-blocking ``flock`` on a lock file; ``LockHeld`` if another
  process (or another open file description in this one) holds it. Closing the returned
  descriptor releases it; the kernel releases it when the process dies, so no stale lock is left.

Blocking calls: every fsync here waits for the disk; call these off the event loop.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; the message is the lock file's path."""


class Staged:
    """A complete temporary file beside ``path``, not yet in place."""

    def __init__(self, path: Path, tmp: Path, durable: bool) -> None:
        self.path = path
        self.tmp = tmp
        self._durable = durable

    def commit(self) -> None:
        """Rename the temporary file over ``path`` (and fsync the directory when durable)."""
        os.replace(self.tmp, self.path)
        if self._durable:
            fsync_directory(self.path.parent)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def stage(path: Path, data: bytes, *, durable: bool = True) -> Staged:
    """Write ``data`` to a new temporary file in ``path``'s directory (mode 0600)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(path, tmp, durable)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; with ``durable``, also across a power loss."""
    staged = stage(path, data, durable=durable)
    try:
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exclusive_lock(path: Path) -> int:
    """Take an exclusive lock on ``path`` (created 0600 if missing) without waiting.

    Returns the descriptor that holds it (``os.close`` releases it); ``LockHeld`` if it is taken.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise LockHeld(str(path)) from e
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_held(path: Path) -> bool:
    """Whether some process holds the lock on ``path`` now (a missing file is not held)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock at once
    return False
