"""Spool: the durable, append-only local log every audit record reaches before anything else.

Contract: ``await spool.append(record)`` returns only when the record is durable in the configured
sense, and raises SpoolUnavailable when it cannot be recorded — the caller then refuses the
request (no audit, no access; 9.1.8).

- ``fsync``: durable on disk (survives power loss). One writer thread does group commit: every
  record that arrived while the previous fsync ran is written and covered by the next one fsync.
- ``batch``: written to the operating system (survives the gateway's death, SIGKILL included)
  before ``append`` returns; fsynced every ``batch_interval_ms``.

Format (docs/decisions/001-spool-format.md): segment files ``NNNNNNNNNNNN.jsonl`` in the spool
directory, one JSON record per line, appended only. A line without its final newline is a torn
write that was never acknowledged; readers skip it. The writer starts a new segment at every
start, so it never appends after a torn line. The thread owns all file I/O; the event loop hands
records over through a bounded list (``max_pending``), and a full list is a refusal, not a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.errors import SpoolUnavailable

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


@dataclass
class SpoolHooks:
    """Callbacks for metrics; called from the writer thread (prometheus-client is thread-safe)."""

    fsync_seconds: Callable[[float], None] = lambda s: None
    pending: Callable[[int], None] = lambda n: None
    written: Callable[[int, int], None] = lambda records, nbytes: None
    error: Callable[[str], None] = lambda reason: None
    healthy: Callable[[bool], None] = lambda ok: None


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        durability: Literal["fsync", "batch"] = "fsync",
        batch_interval_ms: float = 5.0,
        segment_max_bytes: int = 64 * 1024 * 1024,
        max_pending: int = 10_000,
        hooks: SpoolHooks | None = None,
    ) -> None:
        self.directory = directory
        self.durability = durability
        self._interval = batch_interval_ms / 1000.0
        self._segment_max = segment_max_bytes
        self._max_pending = max_pending
        self._hooks = hooks or SpoolHooks()
        self._cond = threading.Condition()
        self._pending: list[tuple[bytes, _Waiter]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._segment_no = 0
        self._segment_bytes = 0
        self._dirty = False
        self.healthy = False
        self.last_error: str | None = None
        self._seq = 0

    # -- lifecycle (called from the event loop thread, before serving / after draining) --

    def open(self) -> None:
        """Create the directory, find the last sequence number, start a segment and the writer."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = list_segments(self.directory)
        self._segment_no = int(segments[-1].stem) if segments else 0
        self._seq = last_seq(self.directory)
        self._open_segment()
        self.healthy = True
        self._hooks.healthy(True)
        self._thread = threading.Thread(target=self._run, name="audit-spool-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write and fsync everything accepted so far, then stop the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def next_seq(self) -> int:
        """The next per-instance sequence number (event loop only; gap-free across restarts)."""
        self._seq += 1
        return self._seq

    @property
    def writable(self) -> bool:
        return self.healthy and os.access(self.directory, os.W_OK)

    # -- the loop side --

    async def append(self, record: bytes) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._stopping:
                raise SpoolUnavailable("spool_closed")
            if len(self._pending) >= self._max_pending:
                self._hooks.error("backlog_full")
                raise SpoolUnavailable("spool_backlog_full")
            self._pending.append((record, (loop, fut)))
            self._cond.notify()
        await fut

    # -- the writer thread --

    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    timeout = (
                        None
                        if not self._dirty
                        else max(0.0, self._interval - (time.monotonic() - last_sync))
                    )
                    self._cond.wait(timeout)
                batch, self._pending = self._pending, []
                stopping = self._stopping
            self._hooks.pending(len(batch))
            if batch:
                self._write_batch(batch)
            if self._dirty and (
                self.durability == "fsync"
                or stopping
                or time.monotonic() - last_sync >= self._interval
            ):
                self._sync_quietly()
                last_sync = time.monotonic()
            if stopping and not batch:
                with self._cond:
                    if not self._pending:
                        return

    def _write_batch(self, batch: list[tuple[bytes, _Waiter]]) -> None:
        data = b"".join(rec for rec, _ in batch)
        error: str | None = None
        try:
            if self._fd < 0:
                self._open_segment()
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._segment_bytes += len(data)
            self._dirty = True
            if self.durability == "fsync":
                self._sync()
        except OSError as e:
            error = f"spool_write_failed:{e.errno}"
            self._fail(e)
        else:
            self._hooks.written(len(batch), len(data))
            if not self.healthy:
                self.healthy = True
                self.last_error = None
                self._hooks.healthy(True)
                log.warning("audit spool recovered", extra={"spool": str(self.directory)})
        self._wake(batch, error)
        if error is None and self._segment_bytes >= self._segment_max:
            self._rotate()

    def _sync(self) -> None:
        t0 = time.perf_counter()
        os.fsync(self._fd)
        self._hooks.fsync_seconds(time.perf_counter() - t0)
        self._dirty = False

    def _sync_quietly(self) -> None:
        try:
            if self._fd >= 0:
                self._sync()
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError) -> None:
        # After a failed write or fsync the file's state is unknown (a later fsync may report
        # success for lost pages): abandon this segment and start a fresh one on the next batch.
        self.healthy = False
        self.last_error = f"{type(e).__name__}: errno {e.errno}"
        self._hooks.healthy(False)
        self._hooks.error("write_failed")
        log.error(
            "audit spool write failed", extra={"spool": str(self.directory), "errno": e.errno}
        )
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._dirty = False

    def _rotate(self) -> None:
        try:
            self._sync()
            os.close(self._fd)
            self._fd = -1
            self._open_segment()
        except OSError as e:
            self._fail(e)

    def _open_segment(self) -> None:
        self._segment_no += 1
        path = self.directory / f"{self._segment_no:012d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._segment_bytes = 0
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's directory entry must survive a crash too
        finally:
            os.close(dir_fd)

    @staticmethod
    def _wake(batch: list[tuple[bytes, _Waiter]], error: str | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, (loop, fut) in batch:
            by_loop.setdefault(loop, []).append(fut)
        for loop, futs in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, futs, error)


def _settle(futs: list[asyncio.Future[None]], error: str | None) -> None:
    for fut in futs:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(SpoolUnavailable(error))


# -- reading (used by `audit tail`, the shipper and tests) --


def list_segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.stem.isdigit())


@dataclass(frozen=True)
class BadLine:
    segment: Path
    line: int
    problem: str


def read_records(
    directory: Path, on_bad: Callable[[BadLine], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Every complete record in the spool, oldest first. Torn or corrupt lines go to ``on_bad``."""
    for segment in list_segments(directory):
        yield from read_segment(segment, on_bad)


def read_segment(
    segment: Path, on_bad: Callable[[BadLine], None] | None = None
) -> Iterator[dict[str, Any]]:
    with segment.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                if on_bad:
                    on_bad(BadLine(segment, n, "torn final line (never acknowledged)"))
                return
            try:
                rec = json.loads(line)
            except ValueError:
                if on_bad:
                    on_bad(BadLine(segment, n, "not valid JSON"))
                continue
            if isinstance(rec, dict):
                yield rec
            elif on_bad:
                on_bad(BadLine(segment, n, "not a JSON object"))


def last_seq(directory: Path) -> int:
    """The highest access sequence number in the spool (0 if none), newest segment first."""
    for segment in reversed(list_segments(directory)):
        seqs = [r["seq"] for r in read_segment(segment) if r.get("kind") == "access"]
        if seqs:
            return max(int(s) for s in seqs)
    return 0
