"""Admin API: `PUT /admin/policy` — a security engineer applies a new policy (9.2.7).

Contract: the caller authenticates with a bearer token from the same IdP and must hold one of
`authz.policy_admin_roles`; the body is JSON `{"policy": "<policy.csv text>", "reason": "…"}`
and the reason is mandatory. The new policy must pass `policy check`; its effective changes are
recorded (actor = the caller) before it is written to disk and put in force. Answers carry the
request id; refusals never echo library messages.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import policy_tools
from gateway.authz import PolicyEngine
from gateway.errors import AuthenticationError, PolicyError, SpoolUnavailable
from gateway.fsutil import stage
from gateway.identity import Principal, bearer_token

log = logging.getLogger(__name__)

Apply = Callable[..., Awaitable[bool]]
MAX_POLICY_BYTES = 1024 * 1024


def _reply(status: int, request_id: str, **body: Any) -> web.Response:
    headers = {"X-Request-Id": request_id}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pd-gateway-admin"'
    return web.json_response({**body, "request_id": request_id}, status=status, headers=headers)


def policy_put_handler(
    *,
    verify: Callable[[str], Awaitable[Principal]],
    admin_roles: Iterable[str],
    model: Path,
    policy: Path,
    lint: Callable[[Path], list[policy_tools.Problem]],
    apply: Apply,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    allowed_roles = frozenset(admin_roles)

    async def handler(request: web.Request) -> web.Response:
        rid = uuid.uuid4().hex
        if not allowed_roles:
            return _reply(404, rid, error="not_found", message="the policy API is not enabled")
        try:
            principal = await verify(bearer_token(request.headers.get("Authorization")))
        except AuthenticationError as e:
            log.warning("policy API: authentication refused", extra={"reason": e.reason})
            return _reply(401, rid, error="unauthenticated", message=e.public_message)
        if not allowed_roles & set(principal.roles):
            log.warning("policy API: caller lacks a policy admin role", extra={"request_id": rid})
            return _reply(
                403, rid, error="forbidden", message="your job function may not change the policy"
            )
        if (request.content_length or 0) > MAX_POLICY_BYTES:
            return _reply(413, rid, error="too_large", message="policy too large")
        try:
            body = await request.json()
        except ValueError:
            return _reply(400, rid, error="bad_request", message="body must be JSON")
        text, reason = (
            (body.get("policy"), body.get("reason")) if isinstance(body, dict) else (None, None)
        )
        if not isinstance(text, str) or not text.strip():
            return _reply(
                400, rid, error="bad_request", message="policy: the policy.csv text is required"
            )
        if not isinstance(reason, str) or not reason.strip():
            return _reply(
                400,
                rid,
                error="bad_request",
                message="reason: a reason (e.g. a ticket) is required",
            )

        # Checked in the policy's own directory (lint.yaml and break-glass.yaml live beside it),
        # then renamed over it: the file always holds a whole policy.
        data = (text if text.endswith("\n") else text + "\n").encode()
        staged = await asyncio.to_thread(stage, policy, data)  # fsync: off the event loop
        tmp = staged.tmp
        try:
            problems = lint(tmp)
            if problems:
                lines = [f"line {p.line}: {p.message}" for p in problems]
                return _reply(
                    400,
                    rid,
                    error="invalid_policy",
                    message="the policy does not pass policy check",
                    problems=lines,
                )
            try:
                engine = PolicyEngine.load(model, tmp)
            except PolicyError:
                return _reply(400, rid, error="invalid_policy", message="the policy does not load")
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
            return _reply(
                503,
                rid,
                error="audit_unavailable",
                message="the change cannot be recorded; not applied",
            )
        return _reply(200, rid, result="applied", policy_version=engine.version)

    return handler


def break_glass_handler(
    *,
    verify: Callable[[str], Awaitable[Principal]],
    start: Callable[[Principal, float, str], Awaitable[Any]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`POST /admin/break-glass` `{"minutes": N, "justification": "…"}` with the caller's token."""

    async def handler(request: web.Request) -> web.Response:
        rid = uuid.uuid4().hex
        try:
            principal = await verify(bearer_token(request.headers.get("Authorization")))
        except AuthenticationError as e:
            return _reply(401, rid, error="unauthenticated", message=e.public_message)
        try:
            body = await request.json()
        except ValueError:
            return _reply(400, rid, error="bad_request", message="body must be JSON")
        body = body if isinstance(body, dict) else {}
        minutes, justification = body.get("minutes"), body.get("justification")
        if not isinstance(justification, str) or len(justification.strip()) < 10:
            return _reply(
                400,
                rid,
                error="bad_request",
                message="justification: say why (10 characters at least)",
            )
        if not isinstance(minutes, int | float) or isinstance(minutes, bool):
            return _reply(400, rid, error="bad_request", message="minutes: a number is required")
        try:
            session = await start(principal, float(minutes) * 60, justification.strip())
        except PermissionError:
            return _reply(
                403,
                rid,
                error="forbidden",
                message="the policy allows no break-glass access for your job function",
            )
        except ValueError as e:
            return _reply(400, rid, error="bad_request", message=str(e))
        except SpoolUnavailable:
            return _reply(
                503,
                rid,
                error="audit_unavailable",
                message="the session cannot be recorded; not started",
            )
        return _reply(
            200,
            rid,
            session=session.session_id,
            ends_at=session.ends_at,
            grants=[list(g) for g in sorted(session.grants)],
        )

    return handler
