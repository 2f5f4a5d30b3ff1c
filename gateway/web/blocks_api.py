"""The subject-blocks API on the admin port (6.5, 6.6): list the blocked data subjects, block or
unblock one. Authorised by the policy like reading the trail (``gateway.web.trail``: listing is
``audit_log`` read, a change is ``audit_log`` block); the subject travels in the body, never in
the URL, and is kept as a keyed hash where subject hashing is on (5.3, decision 015).

  GET  /admin/subject-blocks   every subject blocked now, as this replica sees it
  POST /admin/subject-blocks   ``{"subject": ID, "action": "block"|"unblock", "reason": "…"}``
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from gateway.audit import query
from gateway.audit.events import COMPLETE, Outcome
from gateway.audit.spool import Spool
from gateway.config.model import IPNetwork
from gateway.core.errors import SpoolUnavailable
from gateway.governance.blocks import BlockRecord, SubjectBlocks
from gateway.governance.subject_hash import SubjectHasher
from gateway.policy.engine import PolicyStore
from gateway.web.admin import AdminRefused, Verify
from gateway.web.boundary import REQUEST_ID
from gateway.web.trail import Ask, TrailAccess, elapsed_us

LIST = Ask("blocks", "read", "admin:subject-blocks", query.MAX_ROWS)
CHANGE = Ask("blocks", "block", "admin:subject-blocks", 0)
MAX_BODY = 16 * 1024
OnBlock = Callable[[str, str], Awaitable[None]]


def change_problem(subject: str | None, action: object, reason: object) -> str | None:
    """What is wrong with a block or unblock as asked (a message naming the field), or None."""
    if subject is None:
        return "subject: the data subject's id is required"
    if action not in ("block", "unblock"):
        return "action: block or unblock"
    if not isinstance(reason, str) or len(reason.strip()) < 3:
        return "reason: say why (the subject's request, a ticket)"
    return None


async def change_block(
    blocks: SubjectBlocks,
    *,
    actor: str,
    subject: str,
    given: str,
    action: str,
    reason: str,
    request_id: str,
    on_block: OnBlock | None,
) -> BlockRecord:
    """Record a block or unblock of ``subject`` (as stored; ``given``: the id as entered) and put
    it in force (6.5, 6.6); refused with 503 if it cannot be recorded. The admin API and the
    console both change blocks through here."""
    try:
        rec = await blocks.change(
            actor=actor, action=action, subject=subject, reason=reason, request_id=request_id
        )
    except SpoolUnavailable:
        raise AdminRefused(
            503,
            "audit_unavailable",
            "the block cannot be recorded; not applied",
            "audit",
            recorded=True,
        ) from None
    if rec.action == "block" and on_block is not None:
        await on_block(given, reason)
    return rec


class BlocksAPI:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        spool: Spool,
        trusted: Sequence[IPNetwork],
        blocks: SubjectBlocks,
        hasher: SubjectHasher | None = None,
        on_block: OnBlock | None = None,
    ) -> None:
        self._trail = TrailAccess(verify=verify, policies=policies, spool=spool, trusted=trusted)
        self._spool = spool
        self._blocks = blocks
        self._hasher = hasher if hasher is not None else SubjectHasher([])
        # Called after a block is recorded, with the subject's id as given and the reason: the
        # gateway ends that person's browser sessions when they are also a user (decision 014).
        self._on_block = on_block

    def register(self, app: web.Application) -> None:
        app.router.add_get("/admin/subject-blocks", self._list)
        app.router.add_post("/admin/subject-blocks", self._change)

    async def _list(self, request: web.Request) -> web.Response:
        """Every subject blocked now, as this replica sees it (ids as stored in the trail)."""
        t0 = time.perf_counter()
        principal = await self._trail.principal(request)
        event = await self._trail.authorise(request, principal, LIST, t0)
        rows = self._blocks.as_json()
        event.status = 200
        event.outcome = COMPLETE
        event.duration_us = elapsed_us(t0)
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

    async def _change(self, request: web.Request) -> web.Response:
        """`{"subject": ID, "action": "block"|"unblock", "reason": "…"}` (6.5, 6.6)."""
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        body: Any = None
        if (request.content_length or 0) <= MAX_BODY:
            with contextlib.suppress(ValueError):
                body = await request.json()
        body = body if isinstance(body, dict) else {}
        raw, action, reason = body.get("subject"), body.get("action"), body.get("reason")
        subject = self._hasher.stored(raw) if isinstance(raw, str) and raw.strip() else None
        event = await trail.authorise(
            request, principal, CHANGE, t0, subjects=[subject] if subject else []
        )
        problem = change_problem(subject, action, reason)
        if problem is not None:
            await trail.deny(event, 400, "bad_request", problem, t0, "bad_request")
        assert subject is not None and isinstance(reason, str) and isinstance(raw, str)
        rec = await change_block(
            self._blocks,
            actor=principal.user,
            subject=subject,
            given=raw.strip(),
            action=str(action),
            reason=reason.strip(),
            request_id=request[REQUEST_ID],
            on_block=self._on_block,
        )
        return web.json_response(
            {
                "result": "blocked" if rec.action == "block" else "unblocked",
                "block_id": rec.block_id,
                "request_id": request[REQUEST_ID],
            }
        )
