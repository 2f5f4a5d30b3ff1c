"""The register of data subjects' requests on the admin port (6.3, 6.5, 6.6, 7.3; decision 029).
Authorised like reading the trail (``gateway.web.trail``): listing is ``audit_log`` read, opening
or closing is ``create`` — or ``block`` when the step blocks or unblocks the subject. The subject
travels in the body, never in the URL, and is kept as the trail keeps it (a keyed hash, 5.3).

  GET  /admin/subject-requests[?overdue=1]   the register: every request, its deadline, standing
  POST /admin/subject-requests               ``{"type", "subject", "received": "YYYY-MM-DD",
                                               "ref", "label", "reason"}``: open a request
  POST /admin/subject-requests/{request}/close  ``{"outcome", "reason", "unblock": bool,
                                               "act": {"what", "where", "by", "when"}}``

Opening a request of type block, correct or destroy blocks the subject in the same step (6.5, 6.6:
at once), through the blocks API's own code (``plan_change``/``make_change``): its access of action
``block``, the ``subject_block`` record, the change of access rights and the request's ``opened``
record in one write. A subject already blocked stays blocked; the request names that block.
Closing a destroy request (or a withdrawal of consent ending in destruction) needs the act of
destruction (7.3: what, where, by whom, when), kept in the ``closed`` record; ``unblock`` ends the
block in the same write. Every state change is a record of the trail (``subject_request``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.audit.events import AccessEvent, SubjectRequestChange
from gateway.audit.recorder import Recorder
from gateway.config.model import IPNetwork
from gateway.core.errors import SpoolUnavailable
from gateway.core.ids import new_id
from gateway.governance.access_rights import AccessRights
from gateway.governance.blocks import SubjectBlocks
from gateway.governance.deadlines import BLOCKING, OUTCOMES, TYPES, due_date
from gateway.governance.requests import Register, SubjectRequest
from gateway.governance.subject_hash import SubjectHasher, subject_problem
from gateway.policy.engine import PolicyStore
from gateway.web.admin import AdminRefused, Verify
from gateway.web.blocks_api import (
    MAX_BODY,
    ChangeRefused,
    OnBlock,
    PlannedChange,
    label_problem,
    make_change,
    plan_change,
)
from gateway.web.boundary import REQUEST_ID
from gateway.web.trail import Ask, TrailAccess, elapsed_us

LIST = Ask("requests", "read", "admin:subject-requests", 10_000)
OPEN = Ask("requests", "create", "admin:subject-requests", 0)
OPEN_BLOCKING = Ask("requests", "block", "admin:subject-requests", 0)
CLOSE = Ask("requests", "create", "admin:subject-requests/{request}/close", 0)
CLOSE_AS_BLOCK = Ask("requests", "block", "admin:subject-requests/{request}/close", 0)
MAX_TEXT = 500
ACT_KEYS = ("what", "where", "by", "when")
NEEDS_ACT = {("destroy", "destroyed"), ("withdraw-consent", "destroyed"), ("block", "destroyed")}


def closing_is_a_block(found: SubjectRequest | None, unblock: bool) -> bool:
    """Closing is the DPO's `block` when it ends the block, or when the request is one that
    blocked (correct, destroy, …): its outcome — a destruction's act (7.3) — is the answer to a
    6.5/6.6 request. An access request is answered with `create`, as anomaly reviews are."""
    return unblock or (found is not None and found.request_type in BLOCKING)


@dataclass(frozen=True)
class Deps:
    """What a register step needs: the admin API and the console pass the same."""

    recorder: Recorder
    register: Register
    blocks: SubjectBlocks
    rights: AccessRights
    on_block: OnBlock | None = None


def _text(body: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{key}: a text of at most {MAX_TEXT} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{key}: printable characters only")
    if required and len(value.strip()) < 3:
        raise ValueError(f"{key}: required (at least 3 characters)")
    return value.strip()


@dataclass(frozen=True)
class Opening:
    """A request to open, checked: the subject's stored forms and the record's values."""

    kind: str
    forms: tuple[str, ...]
    given: str
    received: dt.date
    due: dt.date
    ref: str
    label: str
    reason: str


def plan_open(body: dict[str, Any], hasher: SubjectHasher, register: Register) -> Opening:
    """ValueError naming the field for anything unusable."""
    kind = body.get("type")
    if kind not in TYPES:
        raise ValueError(f"type: one of {', '.join(TYPES)}")
    raw = body.get("subject")
    problem = subject_problem(raw) if isinstance(raw, str) else "subject: the id is required"
    if problem is not None:
        raise ValueError(problem)
    assert isinstance(raw, str)
    received_text = body.get("received")
    try:
        received = dt.date.fromisoformat(str(received_text))
    except ValueError:
        raise ValueError("received: the date the request reached you, YYYY-MM-DD") from None
    today = register.today()
    if received > today:
        raise ValueError(f"received: {received} is after today ({today})")
    if received < today - dt.timedelta(days=366):
        raise ValueError("received: more than a year ago")
    label = body.get("label", "")
    bad_label = label_problem(label, raw)
    if bad_label is not None:
        raise ValueError(bad_label)
    ref = _text(body, "ref")
    if ref and label_problem(ref, raw) is not None:
        raise ValueError("ref: must not contain the subject's id (5.3)")
    return Opening(
        kind=str(kind),
        forms=tuple(hasher.candidates(raw)),
        given=raw,
        received=received,
        due=due_date(str(kind), received, register.calendar),
        ref=ref,
        label=str(label).strip(),
        reason=_text(body, "reason"),
    )


async def open_request(
    opening: Opening, event: AccessEvent, deps: Deps, t0: float
) -> tuple[SubjectRequest, str]:
    """Open it (and block the subject, for a blocking type) as the trail records every opening:
    the access ``event`` (allowed) begun, the records in one write, its outcome. Returns the
    request and what happened to the block (``blocked``, ``already_blocked`` or '')."""
    values = {
        "request_type": opening.kind,
        "label": opening.label,
        "ref": opening.ref,
        "received": opening.received.isoformat(),
        "due": opening.due.isoformat(),
        "outcome": "",
        "act": "",
        "reason": opening.reason,
    }
    reg = deps.register
    if opening.kind in BLOCKING:
        current = deps.blocks.current(opening.forms)
        if current is None:
            plan = plan_change(
                deps.blocks,
                opening.forms,
                opening.given,
                "block",
                f"subject's request ({opening.kind}): blocked at once (6.5, 6.6)",
                opening.label,
            )
            assert isinstance(plan, PlannedChange), plan  # checked fields, nothing in force
            # The request names its block: both records go in one write (6.5: at once).
            block_id = new_id()
            record = reg.change(
                state="opened",
                actor=event.user,
                request_id=event.request_id,
                subject=plan.subject,
                block_id=block_id,
                **values,
            )
            await make_change(
                plan,
                event,
                recorder=deps.recorder,
                blocks=deps.blocks,
                rights=deps.rights,
                given=opening.given,
                t0=t0,
                on_block=deps.on_block,
                also=[record],
                block_id=block_id,
            )
            return await reg.keep(record), "blocked"
        record = reg.change(
            state="opened",
            actor=event.user,
            request_id=event.request_id,
            subject=current.subject,
            block_id=current.block_id,
            **values,
        )
        return await _write(record, event, deps, t0), "already_blocked"
    record = reg.change(
        state="opened",
        actor=event.user,
        request_id=event.request_id,
        subject=opening.forms[0],
        block_id="",
        **values,
    )
    return await _write(record, event, deps, t0), ""


async def _write(
    record: SubjectRequestChange, event: AccessEvent, deps: Deps, t0: float
) -> SubjectRequest:
    pending = await deps.recorder.begin(event)
    try:
        await deps.recorder.note(record)
    except SpoolUnavailable:
        raise AdminRefused(
            503, "audit_unavailable", "the request cannot be recorded", "audit", recorded=True
        ) from None
    await pending.finish(status=200, duration_us=elapsed_us(t0), response_count=1)
    return await deps.register.keep(record)


@dataclass(frozen=True)
class Closing:
    request: SubjectRequest
    outcome: str
    act: str  # canonical JSON, or ''
    unblock: bool
    reason: str


def plan_close(request: SubjectRequest | None, body: dict[str, Any]) -> Closing | ChangeRefused:
    if request is None:
        return ChangeRefused(404, "not_found", "no such request in the register", "not_found")
    if not request.is_open:
        return ChangeRefused(409, "closed", "this request is already closed", "already_closed")
    allowed = OUTCOMES[request.request_type]
    outcome = body.get("outcome")
    if outcome not in allowed:
        message = f"outcome: for a {request.request_type} request, one of {', '.join(allowed)}"
        return ChangeRefused(400, "bad_request", message, "bad_request")
    try:
        reason = _text(body, "reason", required=outcome == "refused")
        act = _act(body.get("act"), needed=(request.request_type, outcome) in NEEDS_ACT)
    except ValueError as e:
        return ChangeRefused(400, "bad_request", str(e), "bad_request")
    unblock = body.get("unblock", False)
    if not isinstance(unblock, bool):
        return ChangeRefused(400, "bad_request", "unblock: true or false", "bad_request")
    return Closing(request, str(outcome), act, unblock, reason)


def _act(value: Any, *, needed: bool) -> str:
    """The act of destruction (7.3) as canonical JSON: what was destroyed, where (which system or
    medium), by whom, when (a date or a time, ISO)."""
    if value is None or value == {}:
        if needed:
            raise ValueError("act: the act of destruction is required (7.3): what, where, by, when")
        return ""
    if not isinstance(value, dict):
        raise ValueError("act: a mapping of what, where, by, when")
    unknown = set(value) - set(ACT_KEYS)
    if unknown:
        raise ValueError(f"act: unknown key {sorted(unknown)[0]!r} (what, where, by, when)")
    act: dict[str, str] = {}
    for key in ACT_KEYS:
        item = value.get(key)
        if isinstance(item, dt.date):
            item = item.isoformat()
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"act.{key}: required")
        if len(item) > MAX_TEXT:
            raise ValueError(f"act.{key}: at most {MAX_TEXT} characters")
        act[key] = item.strip()
    try:
        when = act["when"]
        dt.date.fromisoformat(when) if len(when) == 10 else dt.datetime.fromisoformat(when)
    except ValueError:
        raise ValueError("act.when: a date (YYYY-MM-DD) or a time (ISO 8601)") from None
    return orjson.dumps(act, option=orjson.OPT_SORT_KEYS).decode()


async def close_request(
    closing: Closing, event: AccessEvent, deps: Deps, t0: float
) -> SubjectRequest | ChangeRefused:
    r = closing.request
    record = deps.register.step(
        r,
        state="closed",
        actor=event.user,
        request_id=event.request_id,
        outcome=closing.outcome,
        act=closing.act,
        reason=closing.reason,
    )
    if not closing.unblock:
        return await _write(record, event, deps, t0)
    plan = plan_change(
        deps.blocks,
        [r.subject],
        r.subject,
        "unblock",
        f"subject's request {r.request} closed: {closing.outcome}",
        "",
    )
    if isinstance(plan, ChangeRefused):
        return plan
    await make_change(
        plan,
        event,
        recorder=deps.recorder,
        blocks=deps.blocks,
        rights=deps.rights,
        given=r.subject,
        t0=t0,
        also=[record],
    )
    return await deps.register.keep(record)


def request_json(register: Register, r: SubjectRequest) -> dict[str, Any]:
    """A request as the API and the console show it: its fields, where it stands today."""
    mark = register.standing(r)
    return {
        **asdict(r),
        "act": orjson.loads(r.act) if r.act else None,
        "standing": mark.state,
        "days_left": mark.days_left,
        "due_soon": mark.due_soon,
    }


def _answer(request: web.Request, **body: Any) -> web.Response:
    rid = request[REQUEST_ID]
    return web.json_response({**body, "request_id": rid}, headers={"X-Request-Id": rid})


class RequestsAPI:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        recorder: Recorder,
        trusted: Sequence[IPNetwork],
        deps: Deps,
        hasher: SubjectHasher,
    ) -> None:
        self._trail = TrailAccess(
            verify=verify, policies=policies, recorder=recorder, trusted=trusted
        )
        self._deps = deps
        self._hasher = hasher

    def register(self, app: web.Application) -> None:
        app.router.add_get("/admin/subject-requests", self._list)
        app.router.add_post("/admin/subject-requests", self._open)
        app.router.add_post("/admin/subject-requests/{request}/close", self._close)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body: Any = None
        if (request.content_length or 0) <= MAX_BODY:
            try:
                body = await request.json()
            except ValueError:
                body = None
        return body if isinstance(body, dict) else {}

    async def _list(self, request: web.Request) -> web.Response:
        """The register (9.2.6: a read of the trail's own data, recorded)."""
        t0 = time.perf_counter()
        principal = await self._trail.principal(request)
        overdue = request.query.get("overdue", "") in ("1", "true")
        event = await self._trail.authorise(
            request, principal, LIST, t0, filters="overdue" if overdue else "all"
        )
        reg = self._deps.register
        rows = [request_json(reg, r) for r in reg.requests()]
        if overdue:
            rows = [r for r in rows if r["standing"] == "overdue"]
        await self._trail.recorder.complete(
            event, status=200, duration_us=elapsed_us(t0), response_count=len(rows)
        )
        return _answer(request, requests=rows, today=reg.today().isoformat(), counts=reg.counts())

    async def _open(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        body = await self._body(request)
        problem = None
        try:
            opening = plan_open(body, self._hasher, self._deps.register)
        except ValueError as e:
            problem = str(e)
        raw = body.get("subject")
        forms = (
            self._hasher.candidates(raw)
            if isinstance(raw, str) and not subject_problem(raw)
            else []
        )
        blocking = body.get("type") in BLOCKING
        ask = OPEN_BLOCKING if blocking else OPEN
        event = await trail.authorise(
            request,
            principal,
            ask,
            t0,
            filters=f"open&type={_word(body.get('type'))}",
            subjects=forms[:1],
        )
        if problem is not None:
            await trail.deny(event, 400, "bad_request", problem, t0, "bad_request")
        r, block = await open_request(opening, event, self._deps, t0)
        return _answer(
            request,
            result="opened",
            block=block,
            request_no=r.request,
            register=request_json(self._deps.register, r),
        )

    async def _close(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        body = await self._body(request)
        found = self._deps.register.get(request.match_info["request"])
        event = await trail.authorise(
            request,
            principal,
            CLOSE_AS_BLOCK if closing_is_a_block(found, body.get("unblock") is True) else CLOSE,
            t0,
            filters=f"close&outcome={_word(body.get('outcome'))}",
            subjects=[found.subject] if found else [],
        )
        plan = plan_close(found, body)
        if isinstance(plan, ChangeRefused):
            await trail.deny(event, plan.status, plan.code, plan.message, t0, plan.reason)
        done = await close_request(plan, event, self._deps, t0)
        if isinstance(done, ChangeRefused):
            await trail.deny(event, done.status, done.code, done.message, t0, done.reason)
        return _answer(request, result="closed", register=request_json(self._deps.register, done))


def _word(value: Any) -> str:
    """A value the caller chose from a list, for the record's ``query`` ('-' if not one)."""
    return (
        value
        if isinstance(value, str)
        and value.replace("-", "").replace("_", "").isalpha()
        and len(value) < 40
        else "-"
    )
