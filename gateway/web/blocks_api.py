"""The subject-blocks API on the admin port (6.5, 6.6): list the blocked data subjects, look one up,
block or unblock one. Authorised by the policy like reading the trail (``gateway.web.trail``:
listing and looking up are ``audit_log`` read, a change is ``audit_log`` block); the subject
travels in the body, never in the URL, and is kept as a keyed hash where subject hashing is on
(5.3, decision 015).

  GET  /admin/subject-blocks          every subject blocked now, as this replica sees it
  POST /admin/subject-blocks/status   ``{"subject": ID}``: blocked? since when, by whom, why
  POST /admin/subject-blocks          ``{"subject": ID, "action": "block"|"unblock",
                                        "reason": "…", "label": "…"}``

A change is, in the trail: the request's access record (action ``block``, found by
`audit search --action block`), the ``subject_block`` record that puts it in force, and a
permission change (``subject_blocked``/``subject_unblocked``, found by `audit permissions`,
9.2.7) — the last two in one write, before the answer. Unblocking a subject that is not blocked,
or blocking one that is, is refused (409): the DPO's command did not do what they meant. The
console's block and unblock (decision 025) go through ``plan_change`` and ``make_change`` too, so
both leave the same records.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from gateway.audit import query
from gateway.audit.events import AccessEvent, PermissionChange
from gateway.audit.recorder import Note, Recorder
from gateway.config.model import IPNetwork
from gateway.core.errors import SpoolUnavailable
from gateway.governance.access_rights import AccessRights
from gateway.governance.blocks import BlockRecord, SubjectBlocks
from gateway.governance.subject_hash import SubjectHasher, subject_problem
from gateway.identity.tokens import Principal
from gateway.policy.engine import PolicyStore
from gateway.web.admin import AdminRefused, Verify
from gateway.web.boundary import REQUEST_ID
from gateway.web.trail import Ask, TrailAccess, elapsed_us

LIST = Ask("blocks", "read", "admin:subject-blocks", query.MAX_ROWS)
STATUS = Ask("blocks", "read", "admin:subject-blocks/status", query.MAX_ROWS)
CHANGE = Ask("blocks", "block", "admin:subject-blocks", 0)
MAX_BODY = 16 * 1024
MAX_LABEL_CHARS = 200
# Told the subject's id as given after a block is in force: the gateway ends that person's
# browser sessions when they are also a user (decision 014).
OnBlock = Callable[[str], Awaitable[None]]


def _answer(request: web.Request, **body: Any) -> web.Response:
    rid = request[REQUEST_ID]
    return web.json_response({**body, "request_id": rid}, headers={"X-Request-Id": rid})


class BlocksAPI:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        recorder: Recorder,
        trusted: Sequence[IPNetwork],
        blocks: SubjectBlocks,
        rights: AccessRights,
        hasher: SubjectHasher | None = None,
        on_block: OnBlock | None = None,
    ) -> None:
        self._trail = TrailAccess(
            verify=verify, policies=policies, recorder=recorder, trusted=trusted
        )
        self._recorder = recorder
        self._blocks = blocks
        self._rights = rights
        self._hasher = hasher if hasher is not None else SubjectHasher([])
        # Called after a block is recorded, with the subject's id as given: the gateway ends
        # that person's browser sessions when they are also a user (decision 014).
        self._on_block = on_block

    def register(self, app: web.Application) -> None:
        app.router.add_get("/admin/subject-blocks", self._list)
        app.router.add_post("/admin/subject-blocks", self._change)
        app.router.add_post("/admin/subject-blocks/status", self._status)

    async def _list(self, request: web.Request) -> web.Response:
        """Every subject blocked now, as this replica sees it: the stored form in full (a keyed
        hash with subject hashing) and the label the DPO gave the block."""
        t0 = time.perf_counter()
        principal = await self._trail.principal(request)
        event = await self._trail.authorise(request, principal, LIST, t0)
        rows = self._blocks.as_json()
        await self._recorder.complete(
            event, status=200, duration_us=elapsed_us(t0), response_count=len(rows)
        )
        return _answer(
            request, blocks=rows, view_age_seconds=round(self._blocks.view_age_seconds, 3)
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body: Any = None
        if (request.content_length or 0) <= MAX_BODY:
            with contextlib.suppress(ValueError):
                body = await request.json()
        return body if isinstance(body, dict) else {}

    async def _asked(
        self, request: web.Request, principal: Principal, ask: Ask, t0: float
    ) -> tuple[str, list[str], AccessEvent, dict[str, Any]]:
        """The subject of a lookup or a change (as given, and its stored forms) and the access
        record of the request, authorised; a missing or unusable id is a recorded 400."""
        body = await self._body(request)
        raw = body.get("subject")
        problem = subject_problem(raw) if isinstance(raw, str) else "subject: the id is required"
        forms = self._hasher.candidates(raw) if problem is None and isinstance(raw, str) else []
        event = await self._trail.authorise(
            request,
            principal,
            ask,
            t0,
            filters=_filters(ask, body.get("action")),
            subjects=forms[:1],
        )
        if problem is not None:
            await self._trail.deny(event, 400, "bad_request", problem, t0, "bad_subject")
        assert isinstance(raw, str)
        return raw, forms, event, body

    async def _status(self, request: web.Request) -> web.Response:
        """Is this subject blocked, since when, by whom, why; and every block and unblock of it
        this replica knows of (the DPO gives the id, never reads a hash)."""
        t0 = time.perf_counter()
        principal = await self._trail.principal(request)
        _, forms, event, _ = await self._asked(request, principal, STATUS, t0)
        current = self._blocks.current(forms)
        history = self._blocks.history(forms)
        await self._recorder.complete(
            event, status=200, duration_us=elapsed_us(t0), response_count=len(history)
        )
        return _answer(
            request,
            stored=forms[0],
            blocked=current is not None,
            block=asdict(current) if current is not None else None,
            history=[asdict(r) for r in history],
            view_age_seconds=round(self._blocks.view_age_seconds, 3),
        )

    async def _change(self, request: web.Request) -> web.Response:
        """Block or unblock (6.5, 6.6), recorded before it is in force or answered."""
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        raw, forms, event, body = await self._asked(request, principal, CHANGE, t0)
        plan = plan_change(
            self._blocks, forms, raw, body.get("action"), body.get("reason"), body.get("label", "")
        )
        if isinstance(plan, ChangeRefused):
            await trail.deny(event, plan.status, plan.code, plan.message, t0, plan.reason)
        done = await make_change(
            plan,
            event,
            recorder=self._recorder,
            blocks=self._blocks,
            rights=self._rights,
            given=raw,
            t0=t0,
            on_block=self._on_block,
        )
        return _answer(
            request,
            result="blocked" if done.record.action == "block" else "unblocked",
            block_id=done.record.block_id,
            change_id=done.change.change_id,
            stored=plan.subject,
        )


@dataclass(frozen=True)
class ChangeRefused:
    """Why a block or unblock cannot be made as asked: the answer's status and code, a message
    naming the field, and the reason the trail records."""

    status: int
    code: str
    message: str
    reason: str


@dataclass(frozen=True)
class PlannedChange:
    """A block or unblock that may be made: the subject as stored (for an unblock, the form the
    block in force was made under, whichever subject key was current then) and the label."""

    action: str
    subject: str
    reason: str
    label: str


@dataclass(frozen=True)
class ChangeMade:
    record: BlockRecord
    change: PermissionChange


def plan_change(
    blocks: SubjectBlocks, forms: Sequence[str], raw: str, action: Any, reason: Any, label: Any
) -> PlannedChange | ChangeRefused:
    """A change as asked, or why it is refused (400 for a bad field, 409 for a needless one: the
    DPO's command would not do what they meant). The admin API and the console both ask here."""
    if action not in ("block", "unblock"):
        return ChangeRefused(400, "bad_request", "action: block or unblock", "bad_request")
    if not isinstance(reason, str) or len(reason.strip()) < 3:
        return ChangeRefused(
            400, "bad_request", "reason: say why (the subject's request, a ticket)", "no_reason"
        )
    problem = label_problem(label, raw)
    if problem is not None:
        return ChangeRefused(400, "bad_request", problem, "bad_label")
    assert isinstance(label, str)
    current = blocks.current(forms)
    if action == "unblock" and current is None:
        nothing = "this data subject is not blocked: nothing to unblock"
        return ChangeRefused(409, "not_blocked", nothing, "not_blocked")
    if action == "block" and current is not None:
        return ChangeRefused(409, "already_blocked", _already(current), "already_blocked")
    return PlannedChange(
        action=str(action),
        subject=current.subject if current is not None else forms[0],
        reason=reason.strip(),
        label=label.strip() or (current.label if current is not None else ""),
    )


async def make_change(
    plan: PlannedChange,
    event: AccessEvent,
    *,
    recorder: Recorder,
    blocks: SubjectBlocks,
    rights: AccessRights,
    given: str,
    t0: float,
    status: int = 200,
    on_block: OnBlock | None = None,
    also: Sequence[Note] = (),
    block_id: str | None = None,
) -> ChangeMade:
    """The change, as the trail holds every one (the admin API's and the console's alike):
    ``event`` (the request's access, action ``block``, allowed by the policy) begun, then the
    ``subject_block`` record and its permission change in one write, then the access's outcome
    (``status``); the block in force on this replica before that. ``on_block`` is then told the
    id as ``given`` (the person's browser sessions end, decision 014). ``also``: records written in
    the same write (a subject request's state change that made the block, decision 029), which
    names the block by ``block_id`` (drawn by the caller; a fresh one when None)."""
    pending = await recorder.begin(event)
    change = rights.subject_block_change(
        actor=event.user,
        action=plan.action,
        subject=plan.subject,
        label=plan.label,
        reason=plan.reason,
    )
    try:
        rec = await blocks.change(
            actor=event.user,
            action=plan.action,
            subject=plan.subject,
            reason=plan.reason,
            request_id=event.request_id,
            label=plan.label,
            also=[change, *also],
            block_id=block_id,
        )
    except SpoolUnavailable:
        raise AdminRefused(
            503,
            "audit_unavailable",
            "the block cannot be recorded; not applied",
            "audit",
            recorded=True,
        ) from None
    await pending.finish(status=status, duration_us=elapsed_us(t0), response_count=1)
    if rec.action == "block" and on_block is not None:
        await on_block(given)
    return ChangeMade(rec, change)


def _filters(ask: Ask, action: Any) -> str:
    """What was asked, for the access record's ``query`` (never a value the caller typed in)."""
    if ask is not CHANGE:
        return "status"
    return f"action={action}" if action in ("block", "unblock") else "action=-"


def _already(current: BlockRecord) -> str:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(current.ts_us / 1e6))
    return f"this data subject is already blocked (since {since}, by {current.actor})"


def label_problem(label: Any, subject: str) -> str | None:
    """A label names the case for the DPO (a ticket, "request of 3 Dec"), never the person: it
    is kept as written, so it must not hold the id the trail keeps only as a hash (5.3)."""
    if not isinstance(label, str):
        return "label: a short text"
    if len(label) > MAX_LABEL_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in label):
        return f"label: at most {MAX_LABEL_CHARS} printable characters"
    if re.search(rf"(?<![0-9A-Za-z]){re.escape(subject)}(?![0-9A-Za-z])", label):
        return "label: must not contain the subject's id (5.3): name the case, e.g. a ticket"
    return None
