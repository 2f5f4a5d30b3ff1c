"""The one way the gateway writes an access and its outcome to the trail (9.1.8, 9.2.6), and the
other records of the trail beside them.

Contract (every path that records an access uses it: the proxy pipeline, the admin APIs, the
audit query and subject-block APIs, browser login, whatever a CLI command triggers):
- ``begin(access)`` writes an allowed access as ``pending`` *before* anything is done or read,
  and returns a ``Pending`` handle; ``Pending.finish(...)`` writes its outcome record, once. An
  outcome record exists only through a handle, so only for an access begun as pending.
- ``complete(access, ...)`` is an allowed request answered at once: ``begin`` then ``finish``,
  the same two records a forwarded request gets.
- ``refuse(access, status, reason, duration_us)`` is a refusal: one record, complete.
- ``note(record)``: a record of another kind (permission change, subject block, auth event,
  refusal summary, anomaly review, a subject request's change), one record each; ``note_all``
  writes several in one write, all or none.

Why two records for an allowed access even when it is answered at once: the store keeps one row
per access, and `audit verify` gives back both records from it (an allowed access was written
pending, its outcome values came in the outcome record; a denied one is one record). The spool
refuses any other shape (``events.Pairing``), so a path that wrote an outcome on its own would
fail its request rather than break the chain for every later reader.

Every method raises ``SpoolUnavailable`` when the record cannot be written: the caller refuses
(no audit, no access).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from gateway.audit.events import (
    COMPLETE,
    AccessEvent,
    AnomalyReview,
    AuthEvent,
    Outcome,
    PermissionChange,
    RefusalSummary,
    SubjectBlock,
    SubjectRequestChange,
)
from gateway.audit.spool import Spool

Note = (
    PermissionChange
    | RefusalSummary
    | AuthEvent
    | SubjectBlock
    | AnomalyReview
    | SubjectRequestChange
)


class Pending:
    """An access on record as pending; ``finish`` records how it ended."""

    __slots__ = ("_done", "_spool", "event")

    def __init__(self, spool: Spool, event: AccessEvent) -> None:
        self._spool = spool
        self.event = event
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    async def finish(
        self,
        status: int,
        duration_us: int,
        outcome: str = COMPLETE,
        bytes_in: int = 0,
        bytes_out: int = 0,
        upstream_us: int = 0,
        response_subjects: Sequence[str] = (),
        response_count: int = 0,
        response_capped: int = 0,
    ) -> Outcome:
        """Write the outcome record (once: a second call is a bug, RuntimeError). Marked
        finished before the write, so a failed write is not retried as a second outcome.
        Positional arguments serve the request path (keywords cost it, bench/instructions.py)."""
        if self._done:
            raise RuntimeError("this access's outcome is already recorded")
        self._done = True
        record = Outcome(  # positional, in the record's field order
            self.event.event_id,
            status,
            bytes_in,
            bytes_out,
            duration_us,
            upstream_us,
            outcome,
            list(response_subjects),
            response_count,
            response_capped,
        )
        # The size limit refuses new accesses, never the record of one in flight. Written to
        # the operating system before it returns; made durable by the next group commit, not
        # waited for (decision 027: one durable wait per request).
        await self._spool.append(record, admission=False, durable=False)
        return record


class Recorder:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    async def begin(self, event: AccessEvent) -> Pending:
        if event.decision != "allow":
            raise ValueError("only an allowed access is begun; a refusal is refuse()d")
        await self.spool.append(event)
        return Pending(self.spool, event)

    async def complete(
        self,
        event: AccessEvent,
        *,
        status: int,
        duration_us: int,
        response_count: int = 0,
        bytes_out: int = 0,
    ) -> None:
        pending = await self.begin(event)
        await pending.finish(
            status=status,
            duration_us=duration_us,
            response_count=response_count,
            bytes_out=bytes_out,
        )

    async def refuse(
        self, event: AccessEvent, status: int, reason: str, duration_us: int
    ) -> AccessEvent:
        await self.spool.append(event.refuse(status, reason, duration_us))
        return event

    async def note(self, record: Note) -> None:
        await self.spool.append(record)

    async def note_all(self, records: Iterable[Note]) -> None:
        """Appended in one loop iteration: one write, all of them or none."""
        await asyncio.gather(*(self.spool.append(r) for r in records))
