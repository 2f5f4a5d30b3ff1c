"""Shipper: spool → audit store, in its own thread, with nothing lost and nothing doubled.

Contract (docs/decisions/005-exactly-once-shipping.md):
- Records are read in spool order. An access is shipped as one row once its outcome record has
  been read; a refusal at once; an access whose run ended without its outcome (a `start` record
  of a later run follows it) as outcome ``unknown``. The position of the record that completed
  a row is its *completion position*; rows are shipped in that order.
- A batch is every row whose completion position lies in (shipped_through, last]. Its id is
  derived from the spool id and its first row's position, so a batch rebuilt after a crash is
  the same batch with the same id.
- Before a batch is sent its intent (id, last position, row counts) is saved and fsynced. After
  any failure — and on start-up with an intent left behind — the shipper first waits until no
  insert of that batch is running on the server, then counts the batch's rows per table: all
  there → done; none → insert; anything else is reported. This check-before-retry works on
  ClickHouse 18.16 as on modern servers.
- Segments are deleted only once every row they hold is confirmed, never the newest non-empty one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit import schema
from gateway.audit.events import PENDING, UNKNOWN, merge_outcome
from gateway.audit.spool import SUFFIX, decode_line, list_segments
from gateway.audit.store import (
    AuditStore,
    StoreError,
    change_row,
    event_rows,
    record_time_us,
    table_row,
)
from gateway.fsutil import LockHeld, atomic_write, exclusive_lock

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (segment number, byte offset of the record)
BEFORE_ALL: Position = (-1, -1)
STATE_FILE = "shipper.state"
LEGACY_STATE_FILE = "shipper-state.json"  # up to 0.x: JSON replaced by atomic_write per save
STATE_SLOT = 4096
STATE_MAGIC = b"pdgw-shipper-state/2"
LOCK_FILE = "shipper.lock"
ID_FILE = "spool.id"
LAG_REPORT_INTERVAL = 1.0  # seconds between lag updates while a batch waits to be retried
READ_CHUNK = 4 * 1024 * 1024
# A directory listing taken less than this after the directory's mtime is not trusted to be
# complete: the mtime has the granularity of the kernel's coarse clock (a few milliseconds).
RACY_LISTING_NS = 1_000_000_000


class ShipperBusy(Exception):
    """Another shipper (a running gateway, or `audit replay`) holds this spool."""


@dataclass
class ShipperState:
    shipped_through: Position = BEFORE_ALL
    read_from: Position = (0, 0)
    intent: dict[str, Any] | None = None

    def encode(self) -> bytes:
        data = {
            "shipped_through": self.shipped_through,
            "read_from": self.read_from,
            "intent": self.intent,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, text: bytes) -> ShipperState:
        data = json.loads(text)
        through, start = data["shipped_through"], data["read_from"]
        return cls((through[0], through[1]), (start[0], start[1]), data.get("intent"))


class StateFile:
    """The shipper's state on disk, saved durably twice a batch (docs/decisions/005 and 017).

    Two fixed slots of one page each in one file of constant size; a save writes the slot that
    does not hold the newest state (with a counter and a CRC) in place and fdatasyncs it. A
    save cut short by a crash or power loss leaves a slot whose CRC fails, and the other slot —
    the state before — is read. So a save is atomic like a rename, and costs one data sync: no
    temporary file, no rename, no directory fsync (only when the file is first made)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._legacy = directory / LEGACY_STATE_FILE
        self._fd = -1
        self._counter = 0

    def load(self, directory: Path) -> ShipperState:
        self.close()
        if self.path.exists():
            self._fd = os.open(self.path, os.O_RDWR)
            data = os.pread(self._fd, 2 * STATE_SLOT, 0)
            slots = [_parse_slot(data[i * STATE_SLOT : (i + 1) * STATE_SLOT]) for i in (0, 1)]
            valid = [slot for slot in slots if slot is not None]
            if not valid:
                raise ValueError(f"{self.path}: neither state slot is intact")
            self._counter, state = max(valid, key=lambda slot: slot[0])
            return state
        if self._legacy.exists():  # written by an earlier release (atomic_write of the JSON)
            return ShipperState.decode(self._legacy.read_bytes())
        first = list_segments(directory)
        return ShipperState(read_from=(int(first[0].stem), 0) if first else (0, 0))

    def save(self, state: ShipperState) -> None:
        self._counter += 1
        slot = _slot(self._counter, state)
        offset = (self._counter % 2) * STATE_SLOT
        if self._fd < 0:
            # The first save: make the file whole (the other slot blank) and durable, then
            # drop an earlier release's file, which the new one now supersedes.
            data = bytearray(b" " * (2 * STATE_SLOT))
            data[offset : offset + STATE_SLOT] = slot
            atomic_write(self.path, bytes(data))
            self._fd = os.open(self.path, os.O_RDWR)
            self._legacy.unlink(missing_ok=True)
            return
        if os.pwrite(self._fd, slot, offset) != STATE_SLOT:
            raise OSError(f"{self.path}: short write")
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _slot(counter: int, state: ShipperState) -> bytes:
    body = state.encode()
    line = b"%s %d %08x %s\n" % (STATE_MAGIC, counter, zlib.crc32(body), body)
    if len(line) > STATE_SLOT:
        raise ValueError("shipper state larger than its slot")
    return line.ljust(STATE_SLOT, b" ")


def _parse_slot(slot: bytes) -> tuple[int, ShipperState] | None:
    """(counter, state) of an intact slot; None for a blank or torn one."""
    parts = slot.split(b"\n", 1)[0].split(b" ", 3)
    if len(parts) != 4 or parts[0] != STATE_MAGIC or len(slot) != STATE_SLOT:
        return None
    try:
        counter, crc = int(parts[1]), int(parts[2], 16)
        if zlib.crc32(parts[3]) != crc:
            return None
        return counter, ShipperState.decode(parts[3])
    except ValueError:
        return None


def spool_id(directory: Path) -> str:
    """A stable id for this spool directory (part of every batch id)."""
    path = directory / ID_FILE
    if not path.exists():
        tmp = directory / (ID_FILE + ".tmp")
        tmp.write_text(uuid.uuid4().hex[:16])
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # first writer wins
        tmp.unlink()
    return path.read_text().strip()


class Segments:
    """The spool's segment numbers as last listed, listed again only when the directory may have
    changed since: its mtime moved, or the last listing was taken too soon after a change to be
    trusted (a directory's mtime has the file system clock's granularity, so a segment created
    in the same tick as the listing leaves it unchanged). Sizes of segments that are complete
    (a newer one exists) are remembered, so progress is reported without a stat per batch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.numbers: list[int] = []
        self._mtime_ns: int | None = None
        self._racy = True
        self._sizes: dict[int, int] = {}

    def refresh(self) -> None:
        mtime = os.stat(self.directory).st_mtime_ns  # before listing: a later change moves it
        self.numbers = [int(p.stem) for p in list_segments(self.directory)]
        self._mtime_ns = mtime
        self._racy = time.time_ns() - mtime < RACY_LISTING_NS
        known = set(self.numbers)
        self._sizes = {n: size for n, size in self._sizes.items() if n in known}

    def refresh_if_changed(self) -> None:
        """One stat of the directory; a listing only if it may have changed."""
        if self._racy or os.stat(self.directory).st_mtime_ns != self._mtime_ns:
            self.refresh()

    def newer(self, number: int) -> int | None:
        return next((n for n in self.numbers if n > number), None)

    def path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{SUFFIX}"

    def set_size(self, number: int, size: int) -> None:
        self._sizes[number] = size

    def size(self, number: int) -> int:
        """The size of a complete segment (a stat the first time it is asked for)."""
        if number not in self._sizes:
            self._sizes[number] = _size_now(self.path(number))
        return self._sizes[number]

    def delete(self, number: int) -> None:
        self.path(number).unlink(missing_ok=True)
        self.numbers.remove(number)
        self._sizes.pop(number, None)


class SpoolTail:
    """Complete records of the spool from a position on, following new segments as they appear.

    ``on_bad`` hears of a complete line that is not a JSON record (corruption). ``on_torn`` hears
    of a torn final line of a segment that a newer one follows: a write that was never
    acknowledged, skipped as decision 001 says (not an error).

    The directory is listed when the position's segment is not known, and at the end of the
    newest known segment only if the directory changed (``Segments``): not once per read."""

    def __init__(
        self,
        directory: Path,
        start: Position,
        on_bad: Callable[[str], None],
        on_torn: Callable[[str], None] = lambda where: None,
    ) -> None:
        self.directory = directory
        self.position = start
        self.segments = Segments(directory)
        self._on_bad = on_bad
        self._on_torn = on_torn

    def read(self, limit: int = 10_000) -> list[tuple[Position, dict[str, Any]]]:
        out: list[tuple[Position, dict[str, Any]]] = []
        segments = self.segments
        chunk = READ_CHUNK
        while len(out) < limit:
            seg, off = self.position
            if seg not in segments.numbers:
                segments.refresh()
                later = [n for n in segments.numbers if n >= seg]
                if not later:
                    return out
                if seg not in segments.numbers:  # deleted or never existed: the next that does
                    self.position = (later[0], 0)
                    continue
            path = segments.path(seg)
            try:
                with path.open("rb") as f:
                    f.seek(off)
                    data = f.read(chunk)
            except FileNotFoundError:  # deleted since it was listed
                segments.refresh()
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines(keepends=True):
                try:
                    out.append(((seg, off), decode_line(line)))
                except ValueError:
                    self._on_bad(f"{path}@{off}: not a valid record")
                off += len(line)
            self.position = (seg, off)
            if len(data) == chunk:
                # More of this segment to read. A line longer than the chunk: read more at once.
                chunk = chunk if end else chunk * 2
                continue
            chunk = READ_CHUNK
            newer = segments.newer(seg)
            if newer is None:
                segments.refresh_if_changed()
                newer = segments.newer(seg)
                if newer is None:
                    return out  # the live end: a partial line here may still be completed
                # The segment is complete now that a newer one exists, but it may have grown
                # between the read above and the listing: read it to its end again first.
                continue
            if end < len(data):
                self._on_torn(f"{path}@{off}")
            segments.set_size(seg, off + len(data) - end)
            self.position = (newer, 0)
        return out


@dataclass
class _Row:
    completed_at: Position
    access_at: Position
    event: dict[str, Any]


@dataclass
class Assembler:
    """Joins access and outcome records into rows, in completion order."""

    pending: dict[str, tuple[Position, dict[str, Any]]] = field(default_factory=dict)
    orphans: int = 0

    def feed(self, pos: Position, rec: dict[str, Any]) -> list[_Row]:
        kind = rec.get("kind")
        if kind == "access":
            if rec.get("outcome") == PENDING:
                self.pending[rec["event_id"]] = (pos, rec)
                return []
            return [_Row(pos, pos, rec)]
        if kind == "outcome":
            found = self.pending.pop(rec.get("event_id", ""), None)
            if found is None:
                self.orphans += 1
                log.error("outcome record without its access", extra={"position": list(pos)})
                return []
            apos, access = found
            joined = dict(access)
            merge_outcome(joined, rec)
            return [_Row(pos, apos, joined)]
        if kind == "start":
            return self.finalize(pos)
        if kind in ROW_KINDS:
            return [_Row(pos, pos, rec)]
        return []

    def finalize(self, pos: Position) -> list[_Row]:
        """The run that wrote the pending accesses is over: their outcome is unknown."""
        rows = [_Row(pos, apos, {**acc, "outcome": UNKNOWN}) for apos, acc in self.pending.values()]
        self.pending.clear()
        return rows


@dataclass
class ShipperMetrics:
    shipped: Callable[[int], None] = lambda n: None
    batch: Callable[[], None] = lambda: None
    retried: Callable[[], None] = lambda: None
    already_stored: Callable[[], None] = lambda: None  # a retried insert had in fact landed
    error: Callable[[str], None] = lambda kind: None
    lag_seconds: Callable[[float], None] = lambda s: None
    store_up: Callable[[bool], None] = lambda up: None  # at every contact with the store


class Shipper:
    def __init__(
        self,
        directory: Path,
        store_factory: Callable[[], AuditStore],
        *,
        batch_max_rows: int = 5000,
        batch_max_age: float = 1.0,
        max_backoff: float = 30.0,
        poll_interval: float = 0.05,
        probe_interval: float = 15.0,
        metrics: ShipperMetrics | None = None,
        on_progress: Callable[[int, int], None] = lambda deleted, consumed: None,
    ) -> None:
        self.directory = directory
        self._store_factory = store_factory
        self._store: AuditStore | None = None
        self._max_rows = batch_max_rows
        self._max_age = batch_max_age
        self._max_backoff = max_backoff
        self._poll = poll_interval
        self._probe_interval = probe_interval
        self._last_contact = -float("inf")  # monotonic time the store last answered or failed
        self._store_up: bool | None = None
        self._metrics = metrics or ShipperMetrics()
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd = -1
        self._state_file = StateFile(directory)
        self.bad_records = 0
        self.torn_lines = 0
        self.shipped_rows = 0
        self.last_error: str | None = None

    # -- lifecycle --

    def acquire(self) -> None:
        """Take the spool's shipper lock (one shipper per spool); ShipperBusy if it is held."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = exclusive_lock(self.directory / LOCK_FILE)
        except LockHeld as e:
            raise ShipperBusy(str(self.directory)) from e
        self.spool_id = spool_id(self.directory)
        self.state = self._state_file.load(self.directory)

    def release(self) -> None:
        self._state_file.close()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def start(self) -> None:
        self.acquire()
        self._thread = threading.Thread(target=self._run_forever, name="audit-shipper", daemon=True)
        self._thread.start()

    def stop(self, drain_seconds: float = 10.0) -> None:
        """Ship what is complete (for up to ``drain_seconds``), then stop. An unfinished batch keeps
        its intent on disk and is settled by the next start."""
        self._drain_deadline = time.monotonic() + drain_seconds
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()

    # -- the loop --

    def _run_forever(self) -> None:
        # A bug must not silently end shipping: log it, count it, and start over from the
        # last confirmed state (which is on disk) after a pause.
        while not self._stop.is_set():
            try:
                self.run(follow=True)
                return
            except Exception:
                log.exception("audit shipper failed; restarting from its saved state")
                self._metrics.error("crashed")
                if self._store is not None:
                    with contextlib.suppress(Exception):
                        self._store.close()
                    self._store = None
                self._stop.wait(self._max_backoff)
                self.state = self._state_file.load(self.directory)

    def run(self, *, follow: bool, finalize_at_end: bool = False) -> int:
        """Ship until stopped (``follow``) or until the spool is exhausted; return rows shipped.

        ``finalize_at_end``: the spool belongs to an instance that is gone (`audit replay`), so
        accesses still pending at its end are shipped with outcome unknown.
        """
        tail = SpoolTail(self.directory, self.state.read_from, self._bad, self._torn)
        asm = Assembler()
        batch: list[_Row] = []
        first_seen = 0.0
        intent = self.state.intent
        while True:
            records = tail.read()
            for pos, rec in records:
                for row in asm.feed(pos, rec):
                    if row.completed_at > self.state.shipped_through:
                        if not batch:
                            first_seen = time.monotonic()
                        batch.append(row)
            exhausted = not records
            if exhausted and finalize_at_end and not follow and asm.pending:
                batch.extend(asm.finalize(tail.position))
            self._report_lag(batch, asm)
            stopping = self._stop.is_set()
            if intent is not None:
                # Recovery: rebuild exactly the batch that was in flight, then settle it.
                last = tuple(intent["last"])
                if tail.position > last or exhausted:
                    rows = [r for r in batch if r.completed_at <= last]
                    accesses = sum(1 for r in rows if r.event.get("kind") == "access")
                    if accesses != intent["rows"]["access_events"]:
                        self._metrics.error("intent_mismatch")
                        log.error(
                            "rebuilt batch differs from its intent",
                            extra={"batch_id": intent["batch_id"], "rows": len(rows)},
                        )
                    if not self._ship(
                        rows,
                        intent["batch_id"],
                        recovering=True,
                        tail=tail,
                        asm=asm,
                        rest=batch[len(rows) :],
                    ):
                        return self.shipped_rows
                    batch = batch[len(rows) :]
                    intent = None
                    continue
            elif batch and (
                len(batch) >= self._max_rows
                or (
                    exhausted
                    and (time.monotonic() - first_seen >= self._max_age or stopping or not follow)
                )
            ):
                rows = _cut(batch, self._max_rows)
                batch_id = (
                    f"{self.spool_id}-{rows[0].completed_at[0]:012d}-{rows[0].completed_at[1]:012d}"
                )
                if not self._ship(
                    rows, batch_id, recovering=False, tail=tail, asm=asm, rest=batch[len(rows) :]
                ):
                    return self.shipped_rows
                batch = batch[len(rows) :]
                if batch:
                    first_seen = time.monotonic()
                continue
            if exhausted:
                if not follow and not batch:
                    return self.shipped_rows
                if stopping and (not batch or self._past_deadline()):
                    return self.shipped_rows
                if follow and not batch and not stopping:
                    self._probe_when_idle()
                self._pause(self._poll)

    def _pause(self, seconds: float) -> None:
        if not self._stop.is_set():
            self._stop.wait(seconds)
        elif self._drain_deadline is not None:  # draining: the event no longer blocks
            time.sleep(max(0.0, min(seconds, self._drain_deadline - time.monotonic())))

    def _past_deadline(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() >= self._drain_deadline

    def _bad(self, message: str) -> None:
        self.bad_records += 1
        self._metrics.error("bad_record")
        log.error("unreadable spool record", extra={"detail": message})

    def _torn(self, where: str) -> None:
        self.torn_lines += 1
        log.warning(
            "torn final line of a spool segment skipped: a write never acknowledged",
            extra={"detail": where},
        )

    def _probe_when_idle(self) -> None:
        """With nothing to ship the store is not contacted: ask it something now and then, so
        ``store_up`` says whether it is reachable now, not whether it was at the last batch."""
        if time.monotonic() - self._last_contact < self._probe_interval:
            return
        try:
            self._get_store().select("SELECT 1 AS up")
        except StoreError as e:
            self._store_failed(e)
            return
        self._store_answered()

    def _store_answered(self) -> None:
        self._last_contact = time.monotonic()
        if self._store_up is False:
            log.warning("audit store reachable again")
        self._store_up = True
        self._metrics.store_up(True)

    def _store_failed(self, e: StoreError) -> None:
        self._last_contact = time.monotonic()
        self.last_error = str(e)
        self._metrics.error("store")
        if self._store_up is not False:
            log.error("audit store unreachable", extra={"error": str(e)})
        self._store_up = False
        self._metrics.store_up(False)

    def _report_lag(self, batch: list[_Row], asm: Assembler) -> None:
        oldest = [record_time_us(r.event) for r in batch[:1]]
        oldest += [record_time_us(acc) for _, acc in list(asm.pending.values())[:1]]
        lag = (time.time() - min(oldest) / 1e6) if oldest else 0.0
        self._metrics.lag_seconds(max(0.0, lag))

    # -- one batch --

    def _ship(
        self,
        rows: list[_Row],
        batch_id: str,
        *,
        recovering: bool,
        tail: SpoolTail,
        asm: Assembler,
        rest: list[_Row],
    ) -> bool:
        """Ship one batch until it is confirmed; False if told to stop first (intent kept)."""
        tables = batch_tables(rows, batch_id)
        last = rows[-1].completed_at if rows else self.state.shipped_through
        if not recovering:
            self.state.intent = {
                "batch_id": batch_id,
                "last": list(last),
                "rows": {t.name: len(trows) for t, trows in tables.items()},
            }
            self._state_file.save(self.state)
        attempt = 0
        check = recovering
        while True:
            try:
                store = self._get_store()
                for table, trows in tables.items():
                    if not trows:
                        continue
                    if check:
                        self._wait_not_running(store, batch_id)
                        have = store.batch_rows(table, batch_id)
                        if have == len(trows):
                            self._metrics.already_stored()
                            continue
                        if have != 0:
                            self._metrics.error("partial_batch")
                            log.error(
                                "batch partly in the store; not inserted again",
                                extra={
                                    "batch_id": batch_id,
                                    "table": table.name,
                                    "have": have,
                                    "want": len(trows),
                                },
                            )
                            continue
                    store.insert(table, trows, batch_id)
                break
            except StoreError as e:
                self._store_failed(e)
                attempt += 1
                check = True  # the outcome of what was sent is unknown: look before resending
                if self._stop.is_set() and self._past_deadline():
                    return False
                self._metrics.retried()
                delay = min(self._max_backoff, 0.2 * 2 ** min(attempt, 10))
                log.warning(
                    "audit store unavailable; will retry",
                    extra={"batch_id": batch_id, "retry_in_s": delay, "error": str(e)},
                )
                self._wait_reporting_lag(delay, rows, asm)
        self._store_answered()
        self.last_error = None
        self.shipped_rows += len(rows)
        self._metrics.shipped(sum(1 for r in rows if r.event.get("kind") == "access"))
        self._metrics.batch()
        unshipped = [r.access_at for r in rest] + [apos for apos, _ in asm.pending.values()]
        self.state = ShipperState(last, min([*unshipped, tail.position]), None)
        self._state_file.save(self.state)
        self._delete_shipped_segments(tail.segments)
        return True

    def _wait_reporting_lag(self, seconds: float, rows: list[_Row], asm: Assembler) -> None:
        """Wait before a retry, keeping the lag gauge current (it must grow through an outage,
        not stay at its value from before the batch was cut)."""
        end = time.monotonic() + seconds
        while True:
            self._report_lag(rows, asm)
            left = end - time.monotonic()
            if left <= 0 or (self._stop.is_set() and self._past_deadline()):
                return
            self._pause(min(left, LAG_REPORT_INTERVAL))

    def _get_store(self) -> AuditStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def _wait_not_running(self, store: AuditStore, batch_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while store.insert_running(batch_id):
            if time.monotonic() > deadline:
                raise StoreError("an earlier insert of this batch is still running")
            time.sleep(0.2)

    def _delete_shipped_segments(self, segments: Segments) -> None:
        """Delete the segments before ``read_from`` whose rows are all confirmed, never the newest
        non-empty one (it carries the sequence high-water mark), and report the bytes freed and
        the bytes kept though consumed. From what the tail knows of the segments: no listing."""
        numbers = list(segments.numbers)
        read_seg, read_off = self.state.read_from
        if read_off > 0 and read_seg in numbers:
            keep_from = read_seg  # the read position's segment holds data: it is non-empty
        else:  # at the start of a segment (rare): look at what the newer segments hold
            nonempty = [
                n
                for n in numbers
                if (segments.size(n) if n < read_seg else _size_now(segments.path(n))) > 0
            ]
            if not nonempty:
                self._on_progress(0, 0)
                return
            keep_from = min(read_seg, nonempty[-1])
        freed = consumed = 0
        for n in numbers:
            if n < keep_from:
                freed += segments.size(n)
                segments.delete(n)
            elif n < read_seg:
                consumed += segments.size(n)
            elif n == read_seg:
                consumed += read_off
        self._on_progress(freed, consumed)


def _size_now(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# Record kind → the table its rows go to (access records go to access_events and, per subject,
# access_event_subjects; see batch_tables).
KIND_TABLES = {
    "permission_change": schema.PERMISSION_CHANGE_RECORDS,
    "refusal_summary": schema.REFUSAL_SUMMARIES,
    "checkpoint": schema.CHAIN_CHECKPOINTS,
    "auth_event": schema.AUTH_EVENTS,
    "subject_block": schema.SUBJECT_BLOCKS,
}
ROW_KINDS = frozenset({"access", *KIND_TABLES})


def batch_tables(rows: list[_Row], batch_id: str) -> dict[schema.Table, list[dict[str, Any]]]:
    """The rows of one batch, per table, in the order they are inserted (and checked)."""
    tables: dict[schema.Table, list[dict[str, Any]]] = {
        schema.ACCESS_EVENTS: [],
        schema.ACCESS_EVENT_SUBJECTS: [],
        **{t: [] for t in KIND_TABLES.values()},
    }
    # Bound once: hashing a Table (a frozen dataclass with its columns) per row cost more than
    # building the row.
    events, subjects = tables[schema.ACCESS_EVENTS], tables[schema.ACCESS_EVENT_SUBJECTS]
    for r in rows:
        kind = r.event.get("kind")
        if kind == "permission_change":
            tables[schema.PERMISSION_CHANGE_RECORDS].append(change_row(r.event, batch_id))
        elif kind in KIND_TABLES:
            table = KIND_TABLES[kind]
            tables[table].append(table_row(table, r.event, batch_id))
        else:
            row, named = event_rows(r.event, batch_id)
            events.append(row)
            subjects.extend(named)
    return tables


def _cut(batch: list[_Row], max_rows: int) -> list[_Row]:
    """The first ``max_rows`` rows, extended so rows completed by one record stay together."""
    n = min(len(batch), max_rows)
    while n < len(batch) and batch[n].completed_at == batch[n - 1].completed_at:
        n += 1
    return batch[:n]
