"""Admin API for changes of access rights (9.2.7): `PUT /admin/policy` — a security engineer
applies a new policy —, `POST /admin/break-glass`, and `POST /admin/sessions/revoke` — end every
browser session of a user on every replica (decision 014).

Contract: the caller authenticates with a bearer token from the same IdP and must hold one of
`authz.policy_admin_roles`; the body is JSON `{"policy": "<policy.csv text>", "reason": "…"}`
and the reason is mandatory. The new policy must pass `policy check`; its effective changes are
recorded (actor = the caller) before it is written to disk and put in force.

Errors: every refusal is raised through ``_refuse`` as an ``AdminRefused`` and answered by the
admin app's error boundary (``gateway.web.boundary``) like the proxy's: the request id, a stable
code and a message written here, never a library's or an exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from gateway.audit.recorder import Recorder
from gateway.core.errors import PolicyError, SpoolUnavailable
from gateway.core.fsutil import stage
from gateway.governance.access_rights import AccessRights
from gateway.identity.sessions import RevocationList
from gateway.identity.tokens import Principal
from gateway.policy import tools as policy_tools
from gateway.policy.break_glass import DurationOutOfBounds
from gateway.policy.engine import PolicyEngine
from gateway.web.admin import AdminRefused, Verify, caller, ok

log = logging.getLogger(__name__)

Apply = Callable[..., Awaitable[bool]]
MAX_POLICY_BYTES = 1024 * 1024


def _refuse(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    *,
    reason: str,
    principal: Principal | None = None,
    details: dict[str, object] | None = None,
) -> NoReturn:
    """Every refusal of these APIs passes here: logged, then recorded by the admin app's
    refusal recorder (gateway.web.admin)."""
    log.warning(
        "admin API request refused",
        extra={"path": request.path, "status": status, "reason": reason},
    )
    raise AdminRefused(status, code, message, reason, details, principal)


async def _caller(
    request: web.Request,
    verify: Verify,
    *,
    roles: frozenset[str] | None = None,
    forbidden: str = "",
) -> Principal:
    """The authenticated caller: 401 without a valid token; 403 if ``roles`` is given and the
    caller holds none of them."""
    try:
        principal = await caller(request, verify)
    except AdminRefused as e:
        _refuse(request, e.status, e.code, e.public_message, reason=e.reason)
    if roles is not None and not roles & set(principal.roles):
        _refuse(request, 403, "forbidden", forbidden, reason="no_admin_role", principal=principal)
    return principal


async def _json_object(request: web.Request, principal: Principal) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        _refuse(
            request,
            400,
            "bad_request",
            "body must be JSON",
            reason="body_not_json",
            principal=principal,
        )
    return body if isinstance(body, dict) else {}


def policy_put_handler(
    *,
    verify: Verify,
    admin_roles: Iterable[str],
    model: Path,
    policy: Path,
    lint: Callable[[Path], list[policy_tools.Problem]],
    apply: Apply,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    allowed_roles = frozenset(admin_roles)

    async def handler(request: web.Request) -> web.Response:
        if not allowed_roles:
            _refuse(request, 404, "not_found", "the policy API is not enabled", reason="disabled")
        principal = await _caller(
            request,
            verify,
            roles=allowed_roles,
            forbidden="your job function may not change the policy",
        )

        def bad(code: str, message: str, reason: str, **details: object) -> NoReturn:
            _refuse(
                request, 400, code, message, reason=reason, principal=principal, details=details
            )

        if (request.content_length or 0) > MAX_POLICY_BYTES:
            _refuse(
                request,
                413,
                "too_large",
                "policy too large",
                reason="too_large",
                principal=principal,
            )
        body = await _json_object(request, principal)
        text, reason = body.get("policy"), body.get("reason")
        if not isinstance(text, str) or not text.strip():
            bad("bad_request", "policy: the policy.csv text is required", "no_policy")
        if not isinstance(reason, str) or not reason.strip():
            bad("bad_request", "reason: a reason (e.g. a ticket) is required", "no_reason")

        # Checked in the policy's own directory (lint.yaml and break-glass.yaml live beside it),
        # then renamed over it: the file always holds a whole policy.
        data = (text if text.endswith("\n") else text + "\n").encode()
        staged = await asyncio.to_thread(stage, policy, data)  # fsync: off the event loop
        try:
            problems = lint(staged.tmp)
            if problems:
                bad(
                    "invalid_policy",
                    "the policy does not pass policy check",
                    "policy_check_failed",
                    problems=[f"line {p.line}: {p.message}" for p in problems],
                )
            try:
                engine = PolicyEngine.load(model, staged.tmp)
            except PolicyError:
                bad("invalid_policy", "the policy does not load", "policy_load_failed")
            applied = await apply(
                engine,
                actor=principal.user,
                source="admin_api",
                reason=reason.strip(),
                before_install=staged.commit,  # the file now says what is in force
            )
        finally:
            staged.discard()
        if not applied:
            _refuse(
                request,
                503,
                "audit_unavailable",
                "the change cannot be recorded; not applied",
                reason="audit_unavailable",
                principal=principal,
            )
        return ok(request, result="applied", policy_version=engine.version)

    return handler


def break_glass_handler(
    *, verify: Verify, start: Callable[[Principal, float, str], Awaitable[Any]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`POST /admin/break-glass` `{"minutes": N, "justification": "…"}` with the caller's token."""

    async def handler(request: web.Request) -> web.Response:
        principal = await _caller(request, verify)
        body = await _json_object(request, principal)
        minutes, justification = body.get("minutes"), body.get("justification")

        def refuse(status: int, code: str, message: str, reason: str) -> NoReturn:
            _refuse(request, status, code, message, reason=reason, principal=principal)

        if not isinstance(justification, str) or len(justification.strip()) < 10:
            refuse(
                400,
                "bad_request",
                "justification: say why (10 characters at least)",
                "no_justification",
            )
        if not isinstance(minutes, int | float) or isinstance(minutes, bool):
            refuse(400, "bad_request", "minutes: a number is required", "bad_minutes")
        try:
            session = await start(principal, float(minutes) * 60, justification.strip())
        except PermissionError:
            refuse(
                403,
                "forbidden",
                "the policy allows no break-glass access for your job function",
                "no_break_glass_allowance",
            )
        except DurationOutOfBounds as e:
            refuse(
                400,
                "bad_request",
                f"minutes: more than 0 and at most {e.max_minutes:g} minutes for your job function",
                "duration_out_of_bounds",
            )
        except SpoolUnavailable:
            refuse(
                503,
                "audit_unavailable",
                "the session cannot be recorded; not started",
                "audit_unavailable",
            )
        return ok(
            request,
            session=session.session_id,
            ends_at=session.ends_at,
            grants=[list(g) for g in sorted(session.grants)],
        )

    return handler


MAX_USER_CHARS = 256


def session_revoke_handler(
    *,
    verify: Verify,
    admin_roles: Iterable[str],
    revocations: RevocationList | None,
    poll_seconds: float,
    rights: AccessRights,
    recorder: Recorder,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`POST /admin/sessions/revoke` `{"user": "…", "reason": "…"}`: every browser session of the
    user begun until now ends — here at once, on every replica within `revocation_poll_seconds`.
    Allowed to `authz.policy_admin_roles` (who change access rights); the change is recorded
    (``sessions_revoked``, 9.2.7) before the revocation list is written."""
    allowed_roles = frozenset(admin_roles)

    async def handler(request: web.Request) -> web.Response:
        if not allowed_roles:
            _refuse(
                request, 404, "not_found", "the access-rights API is not enabled", reason="disabled"
            )
        principal = await _caller(
            request,
            verify,
            roles=allowed_roles,
            forbidden="your job function may not end other people's sessions",
        )
        if revocations is None:
            _refuse(
                request,
                404,
                "not_found",
                "no browser sessions here (no oidc section)",
                reason="no_oidc",
                principal=principal,
            )
        body = await _json_object(request, principal)
        user, reason = body.get("user"), body.get("reason")

        def bad(message: str, why: str) -> NoReturn:
            _refuse(request, 400, "bad_request", message, reason=why, principal=principal)

        if not isinstance(user, str) or not user.strip():
            bad("user: the employee's user id is required", "no_user")
        if len(user) > MAX_USER_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
            bad(f"user: at most {MAX_USER_CHARS} printable characters", "bad_user")
        if not isinstance(reason, str) or len(reason.strip()) < 3:
            bad("reason: say why (a ticket, an incident)", "no_reason")
        now = time.time()
        change = rights.sessions_revoked(
            actor=principal.user, user=user, before=now, reason=reason.strip()
        )
        try:
            await recorder.note(change)  # 9.2.7: on record before it takes effect
        except SpoolUnavailable:
            _refuse(
                request,
                503,
                "audit_unavailable",
                "the revocation cannot be recorded; not made",
                reason="audit_unavailable",
                principal=principal,
            )
        await revocations.revoke(user, "operator", actor=f"admin:{principal.user}")
        return ok(
            request,
            result="revoked",
            change_id=change.change_id,
            bound_seconds=poll_seconds,
        )

    return handler
