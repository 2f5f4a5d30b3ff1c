"""The register of data subjects' requests (6.3, 6.5, 6.6, 7.3; decision 029): each request, its
type, its legal deadline, whether it was met — as this process sees the trail.

Contract:
- Every state change of a request (opened, its report issued, closed) is a chained
  ``SubjectRequestChange`` record written through the recorder before the register shows it; the
  record holds the request's whole state after the change, so the latest record is the request.
- The register is kept in the process that owns the store (where the anomaly detectors run):
  this process's own records are held beside the spool (``subject-requests.json``, written
  atomically) until the store has them, and the store's are re-read every
  ``subject_requests.evaluate_seconds``; after each read the deadlines are evaluated into the
  gauges ``pdgw_subject_requests_overdue`` and ``…_due_soon`` (counts only: no subject, no id).
- A subject is kept as the trail keeps it (a keyed hash where subject hashing is on, 5.3): the
  caller maps the id the DPO typed first. Labels are the DPO's, never the id.
- Days are calendar days in the register's zone (``subject_requests.timezone``): a request is
  met when it is closed on or before its due day (gateway.governance.deadlines).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit.events import SubjectRequestChange
from gateway.audit.store.base import AuditStore, StoreError
from gateway.config.model import SubjectRequestsConfig
from gateway.core.fsutil import atomic_write
from gateway.core.ids import new_id
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn
from gateway.governance.deadlines import Standing, WorkCalendar, standing

log = logging.getLogger(__name__)

STATE_FILE = "subject-requests.json"
StoreOpener = Callable[[], contextlib.AbstractContextManager[AuditStore]]
_FIELDS = tuple(f.name for f in fields(SubjectRequestChange))


@dataclass(frozen=True)
class SubjectRequest:
    """A request as the register shows it: its latest state and when each step happened."""

    request: str
    request_type: str
    subject: str
    label: str
    ref: str
    received: str
    due: str
    block_id: str
    opened_us: int
    opened_by: str
    report_issued_us: int  # 0: no report issued against it
    closed_us: int  # 0: open
    closed_by: str
    outcome: str
    act: str
    reason: str

    @property
    def is_open(self) -> bool:
        return self.closed_us == 0


# What a request carries unchanged from its opening through every state change.
CARRIED = ("request", "request_type", "subject", "label", "ref", "received", "due", "block_id")


def carried(r: SubjectRequest | SubjectRequestChange) -> dict[str, Any]:
    """The fields of ``r`` that every state change of its request repeats (CARRIED)."""
    return {name: getattr(r, name) for name in CARRIED}


def fold(records: Iterable[SubjectRequestChange]) -> dict[str, SubjectRequest]:
    """Request id → the request, from its state changes in any order (by time, then id)."""
    out: dict[str, SubjectRequest] = {}
    for r in sorted(records, key=lambda r: (r.ts_us, r.change_id)):
        before = out.get(r.request)
        out[r.request] = SubjectRequest(
            **carried(r),
            opened_us=before.opened_us if before else r.ts_us,
            opened_by=before.opened_by if before else r.actor,
            report_issued_us=r.ts_us
            if r.state == "report_issued"
            else (before.report_issued_us if before else 0),
            closed_us=r.ts_us if r.state == "closed" else 0,
            closed_by=r.actor if r.state == "closed" else "",
            outcome=r.outcome,
            act=r.act,
            reason=r.reason,
        )
    return out


def change_from_row(row: dict[str, Any]) -> SubjectRequestChange:
    values = {n: row[n] for n in _FIELDS}
    values["ts_us"] = int(values["ts_us"])
    return SubjectRequestChange(**values)


class Register:
    def __init__(
        self,
        cfg: SubjectRequestsConfig,
        directory: Path,
        open_store: StoreOpener | None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.zone = zoneinfo.ZoneInfo(cfg.timezone)
        self.calendar = WorkCalendar(cfg.calendar_days_off, cfg.calendar_working_days)
        self._file = directory / STATE_FILE
        self._open_store = open_store
        self._now = now
        self._local: dict[str, SubjectRequestChange] = {}  # by change id: this process's
        self._stored: dict[str, SubjectRequestChange] = {}  # by change id: the store's
        self._requests: dict[str, SubjectRequest] = {}
        self._started = False
        self.on_change: Callable[[], None] = lambda: None  # the gauges, evaluated again

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._now(), self.zone).date()

    def day_of(self, ts_us: int) -> dt.date:
        return dt.datetime.fromtimestamp(ts_us / 1e6, self.zone).date()

    def requests(self) -> list[SubjectRequest]:
        """Every request, oldest received first (then by opening)."""
        return sorted(self._requests.values(), key=lambda r: (r.received, r.opened_us, r.request))

    def get(self, request: str) -> SubjectRequest | None:
        return self._requests.get(request)

    def standing(self, r: SubjectRequest, today: dt.date | None = None) -> Standing:
        closed = self.day_of(r.closed_us) if r.closed_us else None
        return standing(
            dt.date.fromisoformat(r.due),
            today or self.today(),
            closed,
            soon_days=self.cfg.due_soon_days,
        )

    def counts(self, today: dt.date | None = None) -> dict[str, int]:
        """Open, overdue and due-soon requests on ``today`` (the gauges' values)."""
        day = today or self.today()
        marks = [self.standing(r, day) for r in self._requests.values() if r.is_open]
        return {
            "open": len(marks),
            "overdue": sum(1 for m in marks if m.state == "overdue"),
            "due_soon": sum(1 for m in marks if m.due_soon),
        }

    def change(
        self, *, state: str, actor: str, request_id: str, **values: Any
    ) -> SubjectRequestChange:
        """A new state change: ``values`` are the request's fields after it (a new request gets
        a fresh id when ``request`` is not given)."""
        request = values.pop("request", "") or self._fresh_id()
        return SubjectRequestChange(
            change_id=new_id(),
            ts_us=time.time_ns() // 1000,
            request=request,
            state=state,
            actor=actor,
            request_id=request_id,
            **values,
        )

    def step(
        self,
        r: SubjectRequest,
        *,
        state: str,
        actor: str,
        request_id: str,
        outcome: str = "",
        act: str = "",
        reason: str | None = None,
    ) -> SubjectRequestChange:
        """The next state change of request ``r``: its fields carried over, with what this step
        adds (``reason``: the request's own unless given)."""
        return self.change(
            state=state,
            actor=actor,
            request_id=request_id,
            **carried(r),
            outcome=outcome,
            act=act,
            reason=r.reason if reason is None else reason,
        )

    def _fresh_id(self) -> str:
        # 8 hex digits: short enough to type and say on the phone, drawn at random so replicas
        # never hand out the same one (decision 029); drawn again on the rare collision.
        while True:
            rid = new_id()[:8]
            if rid not in self._requests:
                return rid

    async def keep(self, record: SubjectRequestChange) -> SubjectRequest:
        """Take a record that is already durable in the trail into the register."""
        self._local[record.change_id] = record
        self._refold()
        await asyncio.to_thread(self._save)
        return self._requests[record.request]

    def _refold(self) -> None:
        self._requests = fold({**self._stored, **self._local}.values())
        self.on_change()

    async def start(self) -> None:
        """This process's own records, then the store's (if it answers). Idempotent."""
        if self._started:
            return
        self._started = True
        if self._file.exists():
            data = json.loads(await asyncio.to_thread(self._file.read_text))
            self._local = {r["change_id"]: SubjectRequestChange(**r) for r in data}
        self._refold()
        await self.poll()

    async def poll(self) -> bool:
        if self._open_store is None:
            return True
        try:
            rows = await asyncio.to_thread(self._read_store)
        except StoreError as e:
            log.warning("subject requests: store not readable; keeping the last view", exc_info=e)
            return False
        self._stored = {r.change_id: r for r in rows}
        shipped = [cid for cid in self._local if cid in self._stored]
        for cid in shipped:
            del self._local[cid]
        if shipped:
            await asyncio.to_thread(self._save)
        self._refold()
        return True

    def _read_store(self) -> list[SubjectRequestChange]:
        assert self._open_store is not None
        with self._open_store() as store:
            rows = store.select(
                f"SELECT {', '.join(_FIELDS)} FROM {store.database}.subject_requests",
                settings={"max_execution_time": 30},
            )
        return [change_from_row(r) for r in rows]

    def _save(self) -> None:
        atomic_write(self._file, json.dumps([asdict(r) for r in self._local.values()]).encode())


def background(
    register: Register, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx beside the anomaly detectors' (the process that owns the store): the register
    read before serving, then re-read and its deadlines evaluated into the gauges periodically."""

    def evaluate() -> None:
        counts = register.counts()
        metrics.requests_open.set(counts["open"])
        metrics.requests_overdue.set(counts["overdue"])
        metrics.requests_due_soon.set(counts["due_soon"])
        metrics.requests_evaluated.set(time.time())

    async def loop() -> None:
        while True:
            await asyncio.sleep(register.cfg.evaluate_seconds)
            try:
                await register.poll()
                evaluate()
            except Exception:  # a bug must not stop the evaluation: the timestamp shows it
                log.exception("subject requests: evaluation failed")

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        register.on_change = evaluate
        await register.start()
        task = spawn(loop(), name="subject-requests")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
