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
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.shipping.rows import Assembler, ShipRow, batch_tables, cut_batch
from gateway.audit.shipping.state import ShipperState, StateFile, spool_id
from gateway.audit.shipping.tail import Segments, SpoolTail, size_now
from gateway.audit.store.base import (
    AuditStore,
    StoreError,
    record_time_us,
)
from gateway.core.fsutil import LockHeld, exclusive_lock

log = logging.getLogger(__name__)

LOCK_FILE = "shipper.lock"
LAG_REPORT_INTERVAL = 1.0  # seconds between lag updates while a batch waits to be retried


class ShipperBusy(Exception):
    """Another shipper (a running gateway, or `audit replay`) holds this spool."""


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
        self._open_store_now()
        self._thread = threading.Thread(target=self._run_forever, name="audit-shipper", daemon=True)
        self._thread.start()

    def _open_store_now(self) -> None:
        """Open the store, and so bring its schema up to date, before the process serves: what
        else it reads from the store (subject blocks, 6.5) then finds the tables from the first
        request on. A store that does not answer now is tried again by the thread."""
        try:
            self._get_store()
        except StoreError as e:
            self._store_failed(e)
        except Exception:  # a bug: logged here, and the thread tries again (and reports it)
            log.exception("audit store could not be opened at start-up")
        else:
            self._store_answered()

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
        batch: list[ShipRow] = []
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
                rows = cut_batch(batch, self._max_rows)
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

    def _report_lag(self, batch: list[ShipRow], asm: Assembler) -> None:
        oldest = [record_time_us(r.event) for r in batch[:1]]
        oldest += [record_time_us(acc) for _, acc in list(asm.pending.values())[:1]]
        lag = (time.time() - min(oldest) / 1e6) if oldest else 0.0
        self._metrics.lag_seconds(max(0.0, lag))

    # -- one batch --

    def _ship(
        self,
        rows: list[ShipRow],
        batch_id: str,
        *,
        recovering: bool,
        tail: SpoolTail,
        asm: Assembler,
        rest: list[ShipRow],
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

    def _wait_reporting_lag(self, seconds: float, rows: list[ShipRow], asm: Assembler) -> None:
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
                if (segments.size(n) if n < read_seg else size_now(segments.path(n))) > 0
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
