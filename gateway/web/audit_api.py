"""The audit query API on the admin port (9.2.6, 6.1.1, 6.3): the trail, read by those allowed.

Endpoints (GET, bearer token of the same IdP; answers are NDJSON, one row a line, then one
``{"_end": {...}}`` line with the row count and whether the limit or the time bound cut it short):
  /admin/audit/events                    access events by filters              audit_log read
  /admin/audit/subjects/{subject}/events every access to one data subject      audit_log read
  /admin/audit/export                    the same filters, up to 1,000,000 rows audit_log export
  /admin/audit/permissions               changes of access rights (9.2.7)      audit_log read
  /admin/audit/subjects/{subject}/report a data subject's report (JSON)        audit_log read
Filters: user, role, system, category, action, decision, status, reason, route, request_id,
break_glass (true|false), since, until (ISO 8601 or µs since the epoch), limit. A subject's
events leave out consultations of the trail about them (category ``audit_log``) unless
``category=audit_log`` asks for exactly those. The report takes ``since`` and ``until`` (at most,
and by default, the moment it was asked for, so it never counts itself) and is the same for the
same period; it names the period it covers.

Authorisation is the policy's (``gateway.web.trail``), so the shipped policy names who may read
the trail, and `policy test` covers it.

9.2.6: every query is itself an event in the trail — an access record (who, purpose
``audit_control``, which filters in ``query``, the subject asked about in ``subject_ids``)
written *before* the store is read (``Recorder.begin``), and an outcome record with the number of
rows returned (``response_count``; ``response_capped`` when the row limit or the time bound cut
the answer). A refusal is one record, like the proxy's. A subject id that is empty, too long or
holds control characters is refused (400, recorded) with a message naming the rule.

Reads run off the event loop in one thread per query, page by page (``gateway.audit.query``), so
the answer streams with one page in memory; on the embedded store they go through the process's
own store, the only way in while the gateway runs (chdb: one process per data directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import query, report
from gateway.audit.checkpoint import Checkpoint
from gateway.audit.events import COMPLETE, AccessEvent
from gateway.audit.recorder import Pending, Recorder
from gateway.audit.store.base import AuditStore, Row, StoreError
from gateway.config.model import IPNetwork
from gateway.core.errors import SpoolUnavailable
from gateway.governance.requests import Register, SubjectRequest
from gateway.governance.subject_hash import SubjectHasher, subject_problem
from gateway.policy.engine import PolicyStore
from gateway.web.admin import AdminRefused, Verify
from gateway.web.boundary import REQUEST_ID
from gateway.web.trail import Ask, TrailAccess, elapsed_us

log = logging.getLogger(__name__)

StoreOpener = Callable[[], contextlib.AbstractContextManager[AuditStore]]

_ASKS = {
    "events": Ask("events", "read", "admin:audit/events", query.MAX_ROWS),
    "subject": Ask("events", "read", "admin:audit/subject", query.MAX_ROWS),
    "export": Ask("events", "export", "admin:audit/export", query.MAX_EXPORT_ROWS),
    "permissions": Ask("permissions", "read", "admin:audit/permissions", query.MAX_ROWS),
    "report": Ask("report", "read", "admin:audit/subject-report", query.MAX_EXPORT_ROWS),
    # Issued against a request of the register, the report is noted there: a write (`create`).
    "report-for-request": Ask(
        "report", "create", "admin:audit/subject-report", query.MAX_EXPORT_ROWS
    ),
}


def _store_unavailable() -> AdminRefused:
    """The store failed after the access was recorded: its outcome record says so."""
    return AdminRefused(
        503, "store_unavailable", "the audit store cannot be read now", "store_error", recorded=True
    )


class AuditAPI:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        recorder: Recorder,
        open_store: StoreOpener | None,
        trusted: Sequence[IPNetwork],
        hasher: SubjectHasher | None = None,
        purposes_of: Mapping[str, str] | None = None,
        public_keys: Callable[[], Mapping[str, Ed25519PublicKey]] | None = None,
        live: Callable[[], list[Checkpoint]] = list,
        register: Register | None = None,
    ) -> None:
        self._trail = TrailAccess(
            verify=verify, policies=policies, recorder=recorder, trusted=trusted
        )
        self._recorder = recorder
        self._open_store = open_store
        self._purposes_of = purposes_of or {}
        self._public_keys = public_keys
        self._live = live
        self._register = register  # a report issued against a request is noted there (6.3)
        # 5.3: investigators give the real id; the trail holds it as a keyed hash (decision 015).
        self._hasher = hasher if hasher is not None else SubjectHasher([])

    def register(self, app: web.Application) -> None:
        app.router.add_get("/admin/audit/events", self._handler("events"))
        app.router.add_get("/admin/audit/subjects/{subject}/events", self._handler("subject"))
        app.router.add_get("/admin/audit/export", self._handler("export"))
        app.router.add_get("/admin/audit/permissions", self._handler("permissions"))
        app.router.add_get("/admin/audit/subjects/{subject}/report", self._report)

    def _handler(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        ask = _ASKS[name]

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, ask)

        return handler

    async def _report(self, request: web.Request) -> web.Response:
        """6.1.1, 6.3: one subject's report for a period, aggregated here so the answer is small.
        The period ends by default when the report is asked for: its own consultation (and any
        later one) is outside it, so the same period always gives the same numbers."""
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        raw = request.match_info["subject"]
        problem = subject_problem(raw)
        forms = self._hasher.candidates(raw) if problem is None else []
        since = until = None
        against: SubjectRequest | None = None
        if problem is None:
            try:
                if set(request.query) - {"since", "until", "request"}:
                    raise ValueError("only since, until and request may be given")
                since, until = query.parse_period(request.query)
                if "request" in request.query:
                    against = self._against(request.query["request"], forms)
            except ValueError as e:
                problem = str(e)
        ask = _ASKS["report-for-request" if "request" in request.query else "report"]
        event = await trail.authorise(
            request, principal, ask, t0, filters="report", subjects=forms[:1]
        )
        if problem is not None:
            await trail.deny(event, 400, "bad_request", problem, t0, "bad_filter")
        if self._open_store is None or self._public_keys is None:
            await trail.deny(event, 503, "no_store", "no audit store is configured", t0, "no_store")
        # Never past this moment: what comes later (this report's own record first) is not in it.
        until = event.ts_us if until is None else min(until, event.ts_us)
        event.query = f"report&since_us={since or 0}&until_us={until}"
        pending = await self._recorder.begin(event)  # 9.2.6: on record before anything is read
        opener, keys, live = self._open_store, self._public_keys(), self._live()

        def run() -> dict[str, Any]:
            with opener() as store:
                return report.build(
                    store,
                    tuple(forms),
                    since_us=since,
                    until_us=until,
                    purposes_of=self._purposes_of,
                    public_keys=keys,
                    live=live,
                )

        outcome, body, status = COMPLETE, None, 200
        try:
            body = await asyncio.to_thread(run)
        except StoreError:
            outcome, status = "store_error", 503
        await pending.finish(
            status=status,
            duration_us=elapsed_us(t0),
            outcome=outcome,
            response_count=body["rows"] if body else 0,
        )
        if body is None:
            raise _store_unavailable()
        if against is not None:
            await self._issued(against, event)
        return web.json_response(
            {
                **body,
                "subject_request": against.request if against is not None else None,
                "generated_at_us": time.time_ns() // 1000,
                "generated_by": principal.user,
                "request_id": request[REQUEST_ID],
            }
        )

    def _against(self, number: str, forms: list[str]) -> SubjectRequest:
        """The open request of the register this report answers (6.3): it must be this
        subject's (the id given hashes to the request's subject)."""
        found = self._register.get(number) if self._register is not None else None
        if found is None or found.subject not in forms:
            raise ValueError("request: no such request of this subject in the register")
        if not found.is_open:
            raise ValueError("request: that request is closed")
        return found

    async def _issued(self, r: SubjectRequest, event: AccessEvent) -> None:
        """The register notes when the report was issued (a state change, in the trail)."""
        assert self._register is not None
        record = self._register.step(
            r, state="report_issued", actor=event.user, request_id=event.request_id
        )
        await self._recorder.note(record)
        await self._register.keep(record)

    async def _serve(self, request: web.Request, ask: Ask) -> web.StreamResponse:
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        raw_subject = request.match_info.get("subject")
        problem = subject_problem(raw_subject) if raw_subject is not None else None
        subject = (
            self._hasher.candidates(raw_subject)
            if raw_subject is not None and problem is None
            else None
        )
        subjects = subject[:1] if subject is not None else []
        try:
            if problem is not None:
                raise ValueError(problem)
            filters, asked = query.parse_filters(request.query, subject)
        except ValueError as e:
            event = trail.event(
                request,
                principal,
                ask,
                filters="",
                subjects=subjects,
                decision="deny",
                reason="bad_filter",
                rule="",
            )
            # The message is ours (it names a parameter), never a value or a library's text.
            await trail.deny(event, 400, "bad_request", str(e), t0)
        event = await trail.authorise(
            request,
            principal,
            ask,
            t0,
            filters=filters.as_record(),
            subjects=subjects,
            refusal="your job function may not read the audit trail",
        )
        if self._open_store is None:
            await trail.deny(event, 503, "no_store", "no audit store is configured", t0, "no_store")
        limit = min(asked or ask.max_rows, ask.max_rows)
        pending = await self._recorder.begin(event)  # 9.2.6: on record before anything is read
        return await self._stream(request, ask, pending, filters, limit, t0)

    async def _stream(
        self,
        request: web.Request,
        ask: Ask,
        pending: Pending,
        filters: query.Filters,
        limit: int,
        t0: float,
    ) -> web.StreamResponse:
        assert self._open_store is not None
        opener = self._open_store
        page = query.Page()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-query")
        loop = asyncio.get_running_loop()
        stack = contextlib.ExitStack()
        rows_iter: Iterator[Row] | None = None

        def start() -> None:
            nonlocal rows_iter
            store = stack.enter_context(opener())
            run = query.events if ask.kind == "events" else query.permissions
            rows_iter = run(store, filters, limit=limit, page=page)

        def take() -> list[Row]:
            assert rows_iter is not None
            out: list[Row] = []
            for row in rows_iter:
                out.append(row)
                if len(out) >= query.PAGE_ROWS:
                    break
            return out

        rid = request[REQUEST_ID]
        resp = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "X-Request-Id": rid}
        )
        outcome = COMPLETE
        status = 200
        sent = 0
        try:
            try:
                await loop.run_in_executor(executor, start)
                chunk = await loop.run_in_executor(executor, take)
            except StoreError:
                status, outcome = 503, "store_error"
                raise _store_unavailable() from None
            await resp.prepare(request)
            while chunk:
                body = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in chunk)
                await resp.write(body.encode())
                sent += len(chunk)
                try:
                    chunk = await loop.run_in_executor(executor, take)
                except StoreError:
                    outcome = "store_error"
                    break
            end = {
                "rows": page.returned,
                "truncated": page.truncated,
                "timed_out": page.timed_out,
                "error": outcome != COMPLETE,
                "request_id": rid,
            }
            await resp.write((json.dumps({"_end": end}) + "\n").encode())
        except (ConnectionError, asyncio.CancelledError):
            outcome = "client_aborted"
            raise
        finally:
            await loop.run_in_executor(executor, stack.close)
            executor.shutdown(wait=False)
            with contextlib.suppress(SpoolUnavailable):
                await pending.finish(
                    status=status,
                    bytes_out=resp.body_length if resp.prepared else 0,
                    duration_us=elapsed_us(t0),
                    outcome=outcome,
                    response_count=sent,
                    response_capped=1 if page.truncated or page.timed_out else 0,
                )
        await resp.write_eof()
        return resp
