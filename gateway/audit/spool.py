"""Spool: the durable, append-only local log every audit record reaches before anything else.

Contract: ``await spool.append(record)`` returns only when the record is durable in the configured
sense, and raises SpoolUnavailable when it cannot be recorded — the caller then refuses the
request (no audit, no access; 9.1.8). It never waits longer than ``sync_timeout``. An access or
outcome record that could not be paired by the trail's readers is refused with
``UnpairedRecord`` (``events.Pairing``); ``gateway.audit.recorder`` is how they are written.

- ``fsync``: durable on disk (survives power loss). Group commit: the records of one loop
  iteration go out in one write(2); one fsync in the sync thread covers every record written
  while the previous fsync ran.
- ``batch``: written to the operating system (survives the gateway's death, SIGKILL included)
  before ``append`` returns; fsynced every ``batch_interval_ms``.

Sequence and chain (docs/decisions/012-hash-chain.md): the spool is the only writer of its
instance's records, so it numbers them as it writes them: each chained record gets the next
sequence number and its hash linked to the previous record's. Only records that reach the file
take a number — a write that fails gives its numbers back — so the sequence of an instance has
no holes but deletions (invariant checked by `pd-gateway audit verify`).

Format (docs/decisions/001-spool-format.md): segment files ``NNNNNNNNNNNN.jsonl`` in the spool
directory, one JSON record per line, appended only. A line without its final newline is a torn
write that was never acknowledged; readers skip it. The writer starts a new segment at every
start, so it never appends after a torn line.

The thread boundary (docs/decisions/003-spool-thread-boundary.md): write(2) of an append-only
buffer into the page cache happens on the event loop (microseconds); every call that waits for
the disk — fsync of segments and of the directory — runs in the one sync thread. The loop-side
buffer is bounded (``max_pending``): a full buffer is a refusal, not a wait.

After a failed write the spool is unhealthy: appends are refused at once (no file is created per
refused request) and a probe tries once a second to start a fresh segment; when the disk has room
again the spool is healthy again by itself, with no request needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.audit import chain
from gateway.audit.chain import ChainHead
from gateway.audit.events import RECORD_VERSION, Chained, Pairing
from gateway.audit.segments import SUFFIX, encode_record, last_head, list_segments
from gateway.core.errors import SpoolUnavailable
from gateway.core.fsutil import LockHeld, exclusive_lock, lock_held
from gateway.core.ids import new_id

log = logging.getLogger(__name__)

WRITER_LOCK = "writer.lock"
PROBE_INTERVAL = 1.0  # seconds between recovery attempts of an unhealthy spool


def writer_active(directory: Path) -> bool:
    """Whether a gateway process is writing this spool now (it holds the writer lock)."""
    return lock_held(directory / WRITER_LOCK)


@dataclass
class SpoolHooks:
    """Callbacks for metrics; called from the writer thread (prometheus-client is thread-safe)."""

    fsync_seconds: Callable[[float], None] = lambda s: None
    pending: Callable[[int], None] = lambda n: None
    written: Callable[[int, int], None] = lambda records, nbytes: None
    error: Callable[[str], None] = lambda reason: None
    healthy: Callable[[bool], None] = lambda ok: None


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        durability: Literal["fsync", "batch"] = "fsync",
        batch_interval_ms: float = 5.0,
        segment_max_bytes: int = 64 * 1024 * 1024,
        max_pending: int = 10_000,
        max_bytes: int | None = None,
        refuse_when_full: bool = True,
        instance: str = "",
        sync_timeout: float = 10.0,
        hooks: SpoolHooks | None = None,
    ) -> None:
        self.directory = directory
        self.instance = instance
        self.max_bytes = max_bytes
        self.refuse_when_full = refuse_when_full
        self._base_bytes = 0
        self._written_bytes = 0
        self._deleted_bytes = 0
        self._consumed_bytes = 0
        self._lock_fd = -1
        self._header_due = False
        self.durability = durability
        self._interval = batch_interval_ms / 1000.0
        self._segment_max = segment_max_bytes
        self._max_pending = max_pending
        self._sync_timeout = sync_timeout
        self._hooks = hooks or SpoolHooks()
        # Loop side: records of the current loop iteration, written by one _flush. Chained
        # records are numbered there; bytes are unchained lines (checkpoints) written as they are.
        self._buf: list[Chained | bytes] = []
        self._waiters: list[asyncio.Future[None]] = []  # answered when durable (the mode's)
        self._written: list[asyncio.Future[None]] = []  # answered when written (durable=False)
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._segment_no = 0
        self._segment_bytes = 0
        self._closed = False
        self._probe: asyncio.TimerHandle | None = None
        # Shared with the sync thread, under _cond.
        self._cond = threading.Condition()
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._retired: list[int] = []  # full or broken segments: fsync, then close
        self._new_segment = False  # a segment was created: fsync the directory too
        self._dirty = False
        # Monotonic time of the oldest record written but not yet covered by a finished fsync:
        # written since the last sync began, and the one under way (batch mode's loss window).
        self._unsynced_since: float | None = None
        self._syncing_since: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._inflight: list[asyncio.Future[None]] = []  # waiters of the fsync under way
        self.healthy = False
        self.last_error: str | None = None
        self._seq = 0
        self._head = chain.GENESIS
        self._pairing = Pairing()  # every access and outcome written can be paired (verify)

    # -- lifecycle --

    def open(self) -> None:
        """Create the directory, find the chain's head, start a segment and the sync thread.

        Takes the directory's writer lock: two gateways on one spool would hand out the same
        sequence numbers. SpoolUnavailable if another process holds it, or if the spool holds
        another instance's chain."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = exclusive_lock(self.directory / WRITER_LOCK)
        except LockHeld as e:
            raise SpoolUnavailable(f"spool {self.directory} is in use by another process") from e
        head = last_head(self.directory)
        if head.seq and head.instance and head.instance != self.instance:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolUnavailable(
                f"spool {self.directory} holds the audit chain of instance {head.instance!r}, "
                f"not {self.instance!r}: keep instance_id or give this instance its own spool_dir"
            )
        segments = list_segments(self.directory)
        self._segment_no = int(segments[-1].stem) if segments else 0
        self._seq, self._head = head.seq, head.hash
        self._base_bytes = sum(p.stat().st_size for p in segments)
        self._open_segment()
        # Every run begins with a `start` record: a reader knows that no outcome written before
        # it can still arrive (those accesses' outcomes are unknown), and the chain carries on.
        start = encode_record(
            {
                "kind": "start",
                "run": new_id(),
                "instance": self.instance,
                "ts_us": time.time_ns() // 1000,
                **self._header_fields(),
            }
        )
        os.write(self._fd, start)
        os.fsync(self._fd)
        self._header_due = False
        self._segment_bytes = len(start)
        self._written_bytes = len(start)
        self._set_healthy(True)
        self._thread = threading.Thread(target=self._run, name="audit-spool-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write and fsync everything accepted so far, then stop (call on the loop's thread)."""
        if self._buf:
            self._flush()
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def head(self) -> ChainHead:
        """The newest record written: its sequence number and hash (loop thread)."""
        return ChainHead(self._seq, self._head, self.instance)

    @property
    def writable(self) -> bool:
        full = self.refuse_when_full and self.over_limit
        return self.healthy and not full and os.access(self.directory, os.W_OK)

    # -- the loop side --

    @property
    def size_bytes(self) -> int:
        """Bytes on disk: what was there at start, plus written, minus what the shipper deleted."""
        return self._base_bytes + self._written_bytes - self._deleted_bytes

    @property
    def backlog_bytes(self) -> int:
        """Bytes on disk the shipper has not yet confirmed (all of them without a shipper)."""
        return self.size_bytes - self._consumed_bytes

    @property
    def over_limit(self) -> bool:
        return self.max_bytes is not None and self.backlog_bytes >= self.max_bytes

    def shipper_progress(self, deleted_bytes: int, consumed_bytes: int) -> None:
        """From the shipper's thread after a confirmed batch: bytes it deleted, and bytes still on
        disk that precede its read position (shipped, kept until their segment can go)."""
        self._deleted_bytes += deleted_bytes
        self._consumed_bytes = consumed_bytes

    async def append(
        self, record: Chained | bytes, *, admission: bool = True, durable: bool = True
    ) -> None:
        """Record ``record`` (a chained record, or the bytes of an unchained line).

        ``admission=False`` for a record that completes an access already admitted (its
        outcome): the size limit refuses new accesses, never the record of one in flight.
        ``durable=False``: return once the record is written to the operating system, without
        waiting for the fsync that the next group commit gives it (an outcome record, decision
        027); in ``batch`` mode every record is answered so."""
        if self._closed:
            raise SpoolUnavailable("spool_closed")
        if not self.healthy:
            # The last write failed; the probe brings the spool back. Refuse at once rather than
            # create a segment file per refused request.
            raise SpoolUnavailable("spool_unhealthy")
        if admission and self.refuse_when_full and self.over_limit:
            # The store has been unreachable long enough for the spool to reach its limit.
            self._hooks.error("spool_full")
            raise SpoolUnavailable("spool_full")
        if len(self._buf) >= self._max_pending:
            self._hooks.error("backlog_full")
            raise SpoolUnavailable("spool_backlog_full")
        if not isinstance(record, bytes):
            self._pairing.admit(record)  # UnpairedRecord: a bug, refused before it is written
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._buf.append(record)
        (self._waiters if durable else self._written).append(fut)
        if not self._flush_scheduled:
            # Group commit: every record appended in this loop iteration goes out in one write.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        await fut

    def _encode(self, records: list[Chained | bytes]) -> tuple[bytes, list[tuple[int, int, str]]]:
        """The bytes of one write, and after each chained record (end offset, seq, hash)."""
        seq, head, instance = self._seq, self._head, self.instance
        parts: list[bytes] = []
        marks: list[tuple[int, int, str]] = []
        size = 0
        if self._header_due:
            header = encode_record({"kind": "segment", **self._header_fields()})
            parts.append(header)
            size += len(header)
        for record in records:
            if isinstance(record, bytes):
                data = record
            else:
                seq += 1
                canon = chain.canonical(record.KIND, RECORD_VERSION, instance, seq, record.values())
                head = chain.link(head, canon)
                data = chain.line(canon, head)
            parts.append(data)
            size += len(data)
            if not isinstance(record, bytes):
                marks.append((size, seq, head))
        return b"".join(parts), marks

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buf:
            return
        records, self._buf = self._buf, []
        waiters, self._waiters = self._waiters, []
        written_only, self._written = self._written, []
        self._hooks.pending(len(waiters) + len(written_only))
        if not self.healthy:
            _settle(waiters + written_only, "spool_unhealthy")
            return
        written = 0
        marks: list[tuple[int, int, str]] = []
        try:
            if self._fd < 0:
                self._open_segment()
            data, marks = self._encode(records)
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                written += n
                view = view[n:]
        except OSError as e:
            # Records wholly written before the failure keep their numbers (they are in the
            # file: a reader sees them); the rest give theirs back, so the sequence stays
            # gapless. Every waiter is refused: the request fails closed.
            for end, seq, digest in marks:
                if end <= written:
                    self._seq, self._head = seq, digest
            self._written_bytes += written
            self._fail(e)
            _settle(waiters + written_only, f"spool_write_failed:{e.errno}")
            return
        self._header_due = False
        if marks:
            self._seq, self._head = marks[-1][1], marks[-1][2]
        self._segment_bytes += len(data)
        self._written_bytes += len(data)
        self._hooks.written(len(records), len(data))
        _settle(written_only, None)  # in the operating system now; the next fsync covers them
        with self._cond:
            if self.durability == "fsync":
                self._sync_waiters.extend(waiters)
            self._mark_dirty(now=bool(waiters) and self.durability == "fsync")
        if self.durability == "fsync":
            # A sync thread that died or a disk that stopped answering must not hang requests:
            # one timer per write (not per record) refuses whatever is still waiting then.
            assert self._loop is not None
            self._loop.call_later(self._sync_timeout, self._expire, waiters)
        else:
            # batch: written to the operating system; the sync thread makes it durable within
            # batch_interval_ms (it was told above, so it wakes for it).
            _settle(waiters, None)
        if self._segment_bytes >= self._segment_max:
            self._retire_segment()

    def _expire(self, waiters: list[asyncio.Future[None]]) -> None:
        if any(not f.done() for f in waiters):
            self._hooks.error("sync_timeout")
            log.error(
                "audit spool fsync did not finish in time", extra={"spool": str(self.directory)}
            )
            _settle(waiters, "spool_sync_timeout")

    def _header_fields(self) -> dict[str, Any]:
        # Each non-empty segment starts with the chain's head at the time it was begun, so the
        # sequence and chain survive the shipper deleting every older segment.
        return {"seq_hw": self._seq, "head": self._head, "instance": self.instance}

    def _open_segment(self) -> None:
        self._header_due = True
        self._segment_no += 1
        path = self.directory / f"{self._segment_no:012d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._segment_bytes = 0
        with self._cond:
            self._new_segment = True

    def _retire_segment(self) -> None:
        """Hand the current segment to the sync thread to fsync and close; the next write opens
        a new one. Under the lock, so the thread never sees a retired fd as the current one."""
        with self._cond:
            if self._fd >= 0:
                self._retired.append(self._fd)
            self._fd = -1
            self._mark_dirty(now=True)

    def _mark_dirty(self, *, now: bool) -> None:
        """Under ``_cond``: written data awaits an fsync. The sync thread is woken when it must
        fsync ``now`` (a request waits for it, a segment was retired) or when it did not know of
        anything to sync (it then waits at most batch_interval_ms); while it knows, waking it
        for every write would only hand the GIL back and forth."""
        was_dirty = self._dirty
        self._dirty = True
        if self._unsynced_since is None:
            self._unsynced_since = time.monotonic()
        if now or not was_dirty:
            self._cond.notify()

    @property
    def unsynced_age_seconds(self) -> float:
        """How long the oldest record not yet fsynced has waited (0: everything is durable) —
        in batch mode what a power loss now would take; bounded by batch_interval_ms plus one
        fsync while the disk answers."""
        with self._cond:
            oldest = [t for t in (self._syncing_since, self._unsynced_since) if t is not None]
        return time.monotonic() - min(oldest) if oldest else 0.0

    def _fail(self, e: OSError) -> None:
        # After a failed write or fsync the file's state is unknown (a later fsync may report
        # success for lost pages): abandon this segment; the probe starts a fresh one.
        self._retire_segment()
        self.last_error = f"{type(e).__name__}: errno {e.errno}"
        self._hooks.error("write_failed")
        if self.healthy:
            log.error(
                "audit spool write failed", extra={"spool": str(self.directory), "errno": e.errno}
            )
        self._set_healthy(False)
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._loop is not None and self._probe is None and not self._closed:
            self._probe = self._loop.call_later(PROBE_INTERVAL, self._try_recover)

    def _try_recover(self) -> None:
        """Start a fresh segment with its header, fsynced; healthy again if that works. One file
        is reused across failed attempts (emptied), never one per attempt."""
        self._probe = None
        if self._closed or self.healthy:
            return
        try:
            if self._fd < 0:
                self._open_segment()
            os.ftruncate(self._fd, 0)
            header = encode_record({"kind": "segment", **self._header_fields()})
            if os.write(self._fd, header) != len(header):
                raise OSError(28, "short write")
            os.fsync(self._fd)
        except OSError as e:
            self.last_error = f"{type(e).__name__}: errno {e.errno}"
            self._schedule_probe()
            return
        self._header_due = False
        self._segment_bytes = len(header)
        self._written_bytes += len(header)
        self._set_healthy(True)
        log.warning("audit spool recovered", extra={"spool": str(self.directory)})

    def _set_healthy(self, ok: bool) -> None:
        self.healthy = ok
        self._hooks.healthy(ok)

    # -- the sync thread: the only place that waits for the disk --

    def _run(self) -> None:
        try:
            self._sync_loop()
        except BaseException:
            # Nothing can be made durable any more: refuse everything from now on.
            log.exception("audit spool sync thread failed")
            with self._cond:
                waiters, self._sync_waiters = self._inflight + self._sync_waiters, []
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._sync_thread_died, waiters)

    def _sync_thread_died(self, waiters: list[asyncio.Future[None]]) -> None:
        _settle(waiters, "spool_sync_failed")
        self.last_error = "sync thread failed"
        self._set_healthy(False)
        self._closed = True  # no probe can bring back a dead thread: restart the gateway

    def _sync_loop(self) -> None:
        last_sync = time.monotonic()
        while True:
            with self._cond:
                while (
                    not self._stopping
                    and not self._sync_waiters
                    and not (self._dirty and time.monotonic() - last_sync >= self._interval)
                ):
                    timeout = (
                        self._interval - (time.monotonic() - last_sync) if self._dirty else None
                    )
                    self._cond.wait(timeout)
                waiters, self._sync_waiters = self._sync_waiters, []
                self._inflight = waiters
                retired, self._retired = self._retired, []
                new_segment, self._new_segment = self._new_segment, False
                self._dirty = False
                # A failed sync leaves its records unsynced: the oldest stays the oldest.
                pending = [s for s in (self._syncing_since, self._unsynced_since) if s is not None]
                self._syncing_since, self._unsynced_since = min(pending, default=None), None
                stopping = self._stopping
                fd = self._fd
            error = self._sync(retired, fd, new_segment)
            last_sync = time.monotonic()
            if error is None:
                with self._cond:
                    self._syncing_since = None
            if waiters and self._loop is not None:
                # A closed loop raises RuntimeError: nobody is waiting there any more.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(_settle, waiters, error)
            if stopping:
                with self._cond:
                    if not self._sync_waiters and not self._retired:
                        return

    def _sync(self, retired: list[int], fd: int, new_segment: bool) -> str | None:
        t0 = time.perf_counter()
        try:
            for old in retired:
                try:
                    os.fsync(old)
                finally:
                    os.close(old)
            if fd >= 0:
                os.fsync(fd)
            if new_segment:
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)  # the new file's directory entry must survive a crash too
                finally:
                    os.close(dir_fd)
        except OSError as e:
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._fail, e)
            return f"spool_fsync_failed:{e.errno}"
        self._hooks.fsync_seconds(time.perf_counter() - t0)
        return None


def _settle(futs: list[asyncio.Future[None]], error: str | None) -> None:
    for fut in futs:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(SpoolUnavailable(error))


# -- reading (used by `audit tail`, the shipper, `audit verify --spool` and tests) --
