"""The admin port: /metrics, /healthz, /readyz, /checkpoint, and what its admin APIs share —
the caller's bearer token, their refusals, and the access records of their requests.

SECURITY: a separate listener, on loopback by default, never routed from the proxy port. Its
error boundary is the proxy's (``gateway.web.boundary``): every error, the router's 404/405 and an
unexpected exception's 500 included, is JSON with the request id and no exception text.

Every refusal of an admin API is recorded like the proxy's: with a valid token, an access event
naming the employee (``Recorder.refuse``); without one, counted in the anonymous refusal
summaries (decision 013). An API that records its own refusals raises ``AdminRefused`` with
``recorded=True`` (the audit API: its refusal names what was asked for). Both record the route's
template (``/admin/audit/subjects/{subject}/events``), never the path as sent: a path may hold a
data subject's id, which the trail keeps only as a keyed hash (5.3, decision 015).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.audit.checkpoint import Checkpoint
from gateway.audit.events import AccessEvent, access
from gateway.audit.recorder import Recorder
from gateway.audit.refusals import AnonymousRefusals
from gateway.config.model import IPNetwork
from gateway.core.errors import AuthenticationError, Refused
from gateway.core.metrics import Metrics
from gateway.forwarding.headers import client_address
from gateway.identity.tokens import Principal, bearer_token
from gateway.web.boundary import REQUEST_ID, error_middleware

ReadinessCheck = Callable[[], dict[str, bool]]
Verify = Callable[[str], Awaitable[Principal]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What an admin API call does, for its access record (9.1.8, 9.2.7).
_ACTIONS = {"PUT": "update", "POST": "create", "DELETE": "delete"}


class AdminRefused(Refused):
    """A refusal of an admin API; ``reason`` is for the trail and logs, not the client.
    ``principal``: who was refused, if a valid token came. ``recorded``: the API wrote the
    refusal's record itself."""

    def __init__(
        self,
        status: int,
        code: str,
        public_message: str,
        reason: str,
        details: dict[str, object] | None = None,
        principal: Principal | None = None,
        *,
        recorded: bool = False,
    ) -> None:
        super().__init__(status, code, public_message, reason)
        self.public_details = details
        self.principal = principal
        self.recorded = recorded


async def caller(request: web.Request, verify: Verify) -> Principal:
    """The caller of an admin API, from their bearer token; refused (401) without a valid one."""
    try:
        return await verify(bearer_token(request.headers.get("Authorization")))
    except AuthenticationError as e:
        raise AdminRefused(401, "unauthenticated", e.public_message, e.reason) from None


def admin_event(
    request: web.Request,
    principal: Principal,
    *,
    trusted: Sequence[IPNetwork],
    route: str,
    system: str,
    category: str,
    purpose: str,
    action: str,
    path: str,
    query: str,
    subject_ids: list[str],
    decision: str,
    reason: str,
    rule: str,
    policy_version: str,
    auth: str = "bearer",
    session: str = "",
    client_ip: str | None = None,
) -> AccessEvent:
    """The access record of one admin API request, by a caller with a valid bearer token (or,
    for the console, a browser session: ``auth``, ``session`` as a keyed hash, and the client's
    address as the process that authenticated it saw it)."""
    return access(
        request_id=request[REQUEST_ID],
        user=principal.user,
        roles=list(principal.roles),
        client_ip=client_ip if client_ip is not None else client_address(request, trusted),
        auth=auth,
        session=session,
        method=request.method,
        path=path,
        query=query,
        route=route,
        system=system,
        category=category,
        purpose=purpose,
        action=action,
        subject_ids=subject_ids,
        decision=decision,
        reason=reason,
        rule=rule,
        policy_version=policy_version,
    )


def template(request: web.Request) -> str:
    """The path of the admin route that matched, as declared (its variables unfilled), or "-"
    when none did: what the trail and the refusal summaries record instead of the path sent."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None and resource.canonical else "-"


def route_label(request: web.Request) -> str:
    """``admin:<template without /admin/>``, the route name of an admin request in the trail."""
    return "admin:" + template(request).removeprefix("/admin/")


def _record_refusals(
    *,
    recorder: Recorder,
    anonymous: AnonymousRefusals,
    policy_version: Callable[[], str],
    trusted: Sequence[IPNetwork],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware inside the error boundary: every ``AdminRefused`` not yet on record is
    recorded before it is answered."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            return await handler(request)
        except AdminRefused as e:
            if e.recorded:
                raise
            route = route_label(request)  # 5.3: the template, never the path as sent
            if e.principal is None:
                client = client_address(request, trusted)
                anonymous.count(route, e.reason, e.status, client, request[REQUEST_ID])
                raise
            event = admin_event(
                request,
                e.principal,
                trusted=trusted,
                route=route,
                system="pd-gateway",
                category="none",
                purpose="",
                action=_ACTIONS.get(request.method, "read"),
                path=template(request),
                query="",
                subject_ids=[],
                decision="deny",
                reason=e.reason,
                rule="",
                policy_version=policy_version(),
            )
            await recorder.refuse(event, e.status, e.reason, int((time.perf_counter() - t0) * 1e6))
            raise

    return record


def build_admin_app(
    metrics: Metrics,
    readiness: ReadinessCheck,
    *,
    recorder: Recorder,
    anonymous: AnonymousRefusals,
    policy_version: Callable[[], str],
    trusted: Sequence[IPNetwork],
) -> web.Application:
    """The admin app with its health routes; the composition root adds the admin APIs."""

    async def metrics_handler(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        # Ready only when a policy is in force and the audit spool can record: otherwise every
        # personal-data request would be refused, so a load balancer should send none here.
        checks = readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    boundary = error_middleware(metrics=metrics, realm="pd-gateway-admin", route_label="admin")
    refusals = _record_refusals(
        recorder=recorder, anonymous=anonymous, policy_version=policy_version, trusted=trusted
    )
    app = web.Application(middlewares=[boundary, refusals])
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def latest_checkpoint_handler(latest: Callable[[], Checkpoint | None]) -> Handler:
    """The newest signed head of this instance's audit chain: a copy outside the store, for
    `pd-gateway audit verify --gateway` (it holds no personal data)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        cp = latest()
        if cp is None:
            return web.json_response({"error": "no_checkpoint_yet"}, status=404)
        return web.json_response(cp.as_dict())

    return handler


def ok(request: web.Request, **body: Any) -> web.Response:
    """An admin API's answer: its fields and the request id."""
    rid = request[REQUEST_ID]
    return web.json_response({**body, "request_id": rid}, headers={"X-Request-Id": rid})
