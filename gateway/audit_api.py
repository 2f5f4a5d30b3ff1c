"""The audit query API on the admin port (9.2.6, 6.1.1, 6.3): the trail, read by those allowed.

Endpoints (GET, bearer token of the same IdP; answers are NDJSON, one row a line, then one
``{"_end": {...}}`` line with the row count and whether the limit or the time bound cut it short):
  /admin/audit/events                    access events by filters              audit_log read
  /admin/audit/subjects/{subject}/events every access to one data subject      audit_log read
  /admin/audit/export                    the same filters, up to 1,000,000 rows audit_log export
  /admin/audit/permissions               changes of access rights (9.2.7)      audit_log read
Filters: user, role, system, category, action, decision, status, reason, route, request_id,
break_glass (true|false), since, until (ISO 8601 or µs since the epoch), limit.

Authorisation is the policy's: reading the trail is the category ``audit_log`` of the system
``audit`` for the purpose ``audit_control`` (9.2.6: control of the lawfulness of processing), so
the shipped policy names who may read it, and `policy test` covers it.

9.2.6: every query is itself an event in the trail — an access record (who, which filters in
``query``, the subject asked about in ``subject_ids``) written *before* the store is read, and an
outcome record with the number of rows returned (``response_count``; ``response_capped`` when
the row limit or the time bound cut the answer). A refusal is one record, like the proxy's.

Reads run off the event loop in one thread per query, page by page (``gateway.audit.query``), so
the answer streams with one page in memory; on the embedded store they go through the process's
own store, the only way in while the gateway runs (chdb: one process per data directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import query, report
from gateway.audit.checkpoint import Checkpoint
from gateway.audit.events import COMPLETE, AccessEvent, Outcome
from gateway.audit.spool import Spool
from gateway.audit.store import AuditStore, Row, StoreError
from gateway.authz import PolicyStore
from gateway.blocks import SubjectBlocks
from gateway.config import AUDIT_CATEGORY, AUDIT_PURPOSE, AUDIT_SYSTEM
from gateway.errors import AuthenticationError, Refused, SpoolUnavailable
from gateway.errors_http import REQUEST_ID
from gateway.identity import Principal, bearer_token
from gateway.policy_api import AdminRefused
from gateway.proxy import client_address
from gateway.subject_hash import SubjectHasher

log = logging.getLogger(__name__)


Verify = Callable[[str], Awaitable[Principal]]
StoreOpener = Callable[[], contextlib.AbstractContextManager[AuditStore]]


class QueryDenied(Refused):
    """A refusal already recorded by this module (the admin refusal recorder must not add one)."""


@dataclass(frozen=True)
class _Ask:
    kind: str  # events | permissions
    action: str  # read | export
    route: str
    max_rows: int


_ASKS = {
    "events": _Ask("events", "read", "admin:audit/events", query.MAX_ROWS),
    "subject": _Ask("events", "read", "admin:audit/subject", query.MAX_ROWS),
    "export": _Ask("events", "export", "admin:audit/export", query.MAX_EXPORT_ROWS),
    "permissions": _Ask("permissions", "read", "admin:audit/permissions", query.MAX_ROWS),
    "blocks": _Ask("blocks", "read", "admin:subject-blocks", query.MAX_ROWS),
    "report": _Ask("report", "read", "admin:audit/subject-report", query.MAX_EXPORT_ROWS),
    "block": _Ask("blocks", "block", "admin:subject-blocks", 0),
}
MAX_BODY = 16 * 1024


def parse_time(value: str) -> int:
    """ISO 8601 (naive = UTC) or µs since the epoch → µs since the epoch."""
    if value.isdigit():
        return int(value)
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1_000_000)


def parse_filters(params: Any, subject: list[str] | None) -> tuple[query.Filters, int | None]:
    """Query-string parameters → Filters and the asked limit. ValueError names the parameter."""
    unknown = set(params) - {*query.FILTERS, "limit"}
    if unknown:
        raise ValueError(f"unknown parameter: {sorted(unknown)[0]}")
    equals = {k: str(params[k]) for k in query._EQUALS if k in params}
    status = params.get("status")
    bg = params.get("break_glass")
    if bg is not None and bg not in ("true", "false"):
        raise ValueError("break_glass: true or false")
    try:
        since = parse_time(params["since"]) if "since" in params else None
        until = parse_time(params["until"]) if "until" in params else None
    except ValueError:
        raise ValueError("since/until: ISO 8601 or µs since the epoch") from None
    if status is not None and not status.isdigit():
        raise ValueError("status: a number")
    limit = params.get("limit")
    if limit is not None and (not limit.isdigit() or int(limit) < 1):
        raise ValueError("limit: a positive number")
    return (
        query.Filters(
            equals=equals,
            role=params.get("role"),
            status=int(status) if status is not None else None,
            break_glass=None if bg is None else bg == "true",
            since_us=since,
            until_us=until,
            subject=tuple(subject) if subject is not None else None,
        ),
        int(limit) if limit is not None else None,
    )


class AuditAPI:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        spool: Spool,
        open_store: StoreOpener | None,
        trusted: Any,
        blocks: SubjectBlocks | None = None,
        hasher: SubjectHasher | None = None,
        purposes_of: Mapping[str, str] | None = None,
        public_keys: Callable[[], Mapping[str, Ed25519PublicKey]] | None = None,
        live: Callable[[], list[Checkpoint]] = list,
        on_block: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._blocks = blocks
        self._purposes_of = purposes_of or {}
        self._public_keys = public_keys
        self._live = live
        # Called after a block is recorded, with the subject's id as given and the reason: the
        # gateway ends that person's browser sessions when they are also a user (issue 9).
        self._on_block = on_block
        self._verify = verify
        self._policies = policies
        self._spool = spool
        self._open_store = open_store
        self._trusted = trusted
        # 5.3: investigators give the real id; the trail holds it as a keyed hash (decision 015).
        self._hasher = hasher if hasher is not None else SubjectHasher([])

    def register(self, app: web.Application) -> None:
        app.router.add_get("/admin/audit/events", self._handler("events"))
        app.router.add_get("/admin/audit/subjects/{subject}/events", self._handler("subject"))
        app.router.add_get("/admin/audit/export", self._handler("export"))
        app.router.add_get("/admin/audit/permissions", self._handler("permissions"))
        app.router.add_get("/admin/audit/subjects/{subject}/report", self._report)
        if self._blocks is not None:  # 6.5, 6.6; the subject travels in the body, not the URL
            app.router.add_get("/admin/subject-blocks", self._list_blocks)
            app.router.add_post("/admin/subject-blocks", self._change_block)

    async def _principal(self, request: web.Request) -> Principal:
        try:
            return await self._verify(bearer_token(request.headers.get("Authorization")))
        except AuthenticationError as e:
            # Counted in the anonymous refusal summaries by the admin app's recorder.
            raise AdminRefused(401, "unauthenticated", e.public_message, e.reason) from None

    async def _authorise(
        self,
        request: web.Request,
        principal: Principal,
        ask: _Ask,
        t0: float,
        *,
        filters: str = "",
        subjects: list[str] | None = None,
        refusal: str = "your job function does not permit this",
    ) -> AccessEvent:
        """The decision, as an access record: refused → recorded and raised (403, ``refusal``);
        allowed → returned."""
        decision = self._policies.engine.decide(
            principal.user, principal.roles, AUDIT_SYSTEM, AUDIT_CATEGORY, ask.action, AUDIT_PURPOSE
        )
        event = self._event(
            request,
            principal,
            ask,
            filters=filters,
            subjects=subjects or [],
            decision="allow" if decision.allowed else "deny",
            reason="rule" if decision.allowed else "no_matching_rule",
            rule=decision.rule,
        )
        if not decision.allowed:
            await self._deny(event, 403, "forbidden", refusal, t0)
        return event

    async def _report(self, request: web.Request) -> web.Response:
        """6.1.1, 6.3: one subject's report, aggregated here so the answer is small."""
        t0 = time.perf_counter()
        principal = await self._principal(request)
        forms = self._hasher.candidates(request.match_info["subject"])
        event = await self._authorise(
            request, principal, _ASKS["report"], t0, filters="report", subjects=forms[:1]
        )
        if self._open_store is None or self._public_keys is None:
            event.decision, event.reason = "deny", "no_store"
            await self._deny(event, 503, "no_store", "no audit store is configured", t0)
        await self._spool.append(event)  # 9.2.6: on record before anything is read
        opener, keys, live = self._open_store, self._public_keys(), self._live()

        def run() -> dict[str, Any]:
            with opener() as store:
                return report.build(
                    store, tuple(forms), purposes_of=self._purposes_of, public_keys=keys, live=live
                )

        outcome, body, status = COMPLETE, None, 200
        try:
            body = await asyncio.to_thread(run)
        except StoreError:
            outcome, status = "store_error", 503
        await self._spool.append(
            Outcome(
                event_id=event.event_id,
                status=status,
                bytes_in=0,
                bytes_out=0,
                duration_us=int((time.perf_counter() - t0) * 1e6),
                upstream_us=0,
                outcome=outcome,
                response_count=(body["accesses"] + body["refused"]) if body else 0,
            ),
            admission=False,
        )
        if body is None:
            raise QueryDenied(
                503, "store_unavailable", "the audit store cannot be read now", "store_error"
            )
        return web.json_response(
            {
                **body,
                "generated_at_us": time.time_ns() // 1000,
                "generated_by": principal.user,
                "request_id": request[REQUEST_ID],
            }
        )

    async def _list_blocks(self, request: web.Request) -> web.Response:
        """Every subject blocked now, as this replica sees it (ids as stored in the trail)."""
        t0 = time.perf_counter()
        assert self._blocks is not None
        principal = await self._principal(request)
        event = await self._authorise(request, principal, _ASKS["blocks"], t0)
        rows = self._blocks.as_json()
        event.status = 200
        event.outcome = COMPLETE
        event.duration_us = int((time.perf_counter() - t0) * 1e6)
        await self._spool.append(event)  # one record: decision and count together
        await self._spool.append(
            Outcome(
                event_id=event.event_id,
                status=200,
                bytes_in=0,
                bytes_out=0,
                duration_us=event.duration_us,
                upstream_us=0,
                outcome=COMPLETE,
                response_count=len(rows),
            ),
            admission=False,
        )
        return web.json_response(
            {
                "blocks": rows,
                "view_age_seconds": round(self._blocks.view_age_seconds, 3),
                "request_id": request[REQUEST_ID],
            }
        )

    async def _change_block(self, request: web.Request) -> web.Response:
        """`{"subject": ID, "action": "block"|"unblock", "reason": "…"}` (6.5, 6.6)."""
        t0 = time.perf_counter()
        assert self._blocks is not None
        principal = await self._principal(request)
        ask = _ASKS["block"]
        body: Any = None
        if (request.content_length or 0) <= MAX_BODY:
            with contextlib.suppress(ValueError):
                body = await request.json()
        body = body if isinstance(body, dict) else {}
        raw, action, reason = body.get("subject"), body.get("action"), body.get("reason")
        subject = self._hasher.stored(raw) if isinstance(raw, str) and raw.strip() else None
        event = await self._authorise(
            request, principal, ask, t0, subjects=[subject] if subject else []
        )
        problem = (
            "subject: the data subject's id is required"
            if subject is None
            else "action: block or unblock"
            if action not in ("block", "unblock")
            else "reason: say why (the subject's request, a ticket)"
            if not isinstance(reason, str) or len(reason.strip()) < 3
            else None
        )
        if problem is not None:
            event.decision, event.reason = "deny", "bad_request"
            await self._deny(event, 400, "bad_request", problem, t0)
        assert subject is not None and isinstance(reason, str)
        try:
            rec = await self._blocks.change(
                actor=principal.user,
                action=str(action),
                subject=subject,
                reason=reason.strip(),
                request_id=request[REQUEST_ID],
            )
        except SpoolUnavailable:
            raise QueryDenied(
                503, "audit_unavailable", "the block cannot be recorded; not applied", "audit"
            ) from None
        if rec.action == "block" and self._on_block is not None and isinstance(raw, str):
            await self._on_block(raw.strip(), reason.strip())
        return web.json_response(
            {
                "result": "blocked" if rec.action == "block" else "unblocked",
                "block_id": rec.block_id,
                "request_id": request[REQUEST_ID],
            }
        )

    def _handler(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        ask = _ASKS[name]

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, ask)

        return handler

    def _event(
        self,
        request: web.Request,
        principal: Principal,
        ask: _Ask,
        *,
        filters: str,
        subjects: list[str],
        decision: str,
        reason: str,
        rule: str,
    ) -> AccessEvent:
        return AccessEvent(
            event_id=uuid.uuid4().hex,
            ts_us=time.time_ns() // 1000,
            request_id=request[REQUEST_ID],
            user=principal.user,
            roles=list(principal.roles),
            client_ip=client_address(request, self._trusted),
            auth="bearer",
            session="",
            method=request.method,
            # The subject's id never goes into the path of the record (5.3): it is in subject_ids.
            path=request.match_info.route.resource.canonical
            if request.match_info.route.resource is not None
            else request.path,
            query=filters,
            route=ask.route,
            system=AUDIT_SYSTEM,
            category=AUDIT_CATEGORY,
            action=ask.action,
            subject_ids=subjects,
            decision=decision,
            reason=reason,
            rule=rule,
            policy_version=self._policies.engine.version,
        )

    async def _deny(
        self, event: AccessEvent, status: int, code: str, message: str, t0: float
    ) -> NoReturn:
        event.status = status
        event.outcome = COMPLETE
        event.duration_us = int((time.perf_counter() - t0) * 1e6)
        await self._spool.append(event)
        raise QueryDenied(status, code, message, event.reason)

    async def _serve(self, request: web.Request, ask: _Ask) -> web.StreamResponse:
        t0 = time.perf_counter()
        principal = await self._principal(request)
        raw_subject = request.match_info.get("subject")
        subject = self._hasher.candidates(raw_subject) if raw_subject is not None else None
        subjects = subject[:1] if subject is not None else []
        try:
            filters, asked = parse_filters(request.query, subject)
        except ValueError as e:
            event = self._event(
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
            await self._deny(event, 400, "bad_request", str(e), t0)
        record = filters.as_record()
        event = await self._authorise(
            request,
            principal,
            ask,
            t0,
            filters=record,
            subjects=subjects,
            refusal="your job function may not read the audit trail",
        )
        if self._open_store is None:
            event.reason = "no_store"
            event.decision = "deny"
            await self._deny(event, 503, "no_store", "no audit store is configured", t0)
        limit = min(asked or ask.max_rows, ask.max_rows)
        await self._spool.append(event)  # 9.2.6: on record before anything is read
        return await self._stream(request, ask, event, filters, limit, t0)

    async def _stream(
        self,
        request: web.Request,
        ask: _Ask,
        event: AccessEvent,
        filters: query.Filters,
        limit: int,
        t0: float,
    ) -> web.StreamResponse:
        assert self._open_store is not None
        page = query.Page()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-query")
        loop = asyncio.get_running_loop()
        stack = contextlib.ExitStack()
        rows_iter: Iterator[Row] | None = None

        def start() -> None:
            nonlocal rows_iter
            store = stack.enter_context(self._open_store())  # type: ignore[misc]
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
                raise QueryDenied(
                    503, "store_unavailable", "the audit store cannot be read now", "store_error"
                ) from None
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
                await self._spool.append(
                    Outcome(
                        event_id=event.event_id,
                        status=status,
                        bytes_in=0,
                        bytes_out=resp.body_length if resp.prepared else 0,
                        duration_us=int((time.perf_counter() - t0) * 1e6),
                        upstream_us=0,
                        outcome=outcome,
                        response_count=sent,
                        response_capped=1 if page.truncated or page.timed_out else 0,
                    ),
                    admission=False,
                )
        await resp.write_eof()
        return resp
