"""The request path, in order, and the one place errors become responses.

Order, and why:
  1. request id            — every response and log line carries it, errors included.
  2. canonical path, route — routing and authorisation see exactly what is forwarded (400 if not).
  3. action, subject ids   — what the request does and to whom, from the route's declaration.
  4. identity              — bearer JWT → Principal; failure is 401, audited.
  5. authorisation         — job function × system × category × action, deny by default (4.4).
  6. audit the decision    — durable in the spool *before* the upstream sees anything (9.1.8);
                             if it cannot be recorded the request is refused (503).
  7. forward               — streaming; the outcome is recorded before the last chunk goes out.
Every failure inside 3-6 is a deny that is itself audited; nothing in that span fails open.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web

from gateway.audit.events import COMPLETE, AccessEvent, Outcome
from gateway.audit.spool import Spool
from gateway.authz import Decision, PolicyStore
from gateway.break_glass import BreakGlass
from gateway.config import Config, Route
from gateway.errors import AuthenticationError, BadRequest, GatewayError, SpoolUnavailable

# Moved to errors_http (the admin app uses it too); re-exported for existing imports.
from gateway.errors_http import REQUEST_ID as REQUEST_ID
from gateway.errors_http import error_middleware as error_middleware
from gateway.errors_http import error_response as error_response
from gateway.identity import Principal, TokenVerifier, bearer_token
from gateway.metrics import Metrics
from gateway.proxy import Exchange, Forwarder, UpstreamError, client_address
from gateway.role_changes import RoleTracker
from gateway.routing import RouteTable, canonical_path, subject_ids

log = logging.getLogger(__name__)


class Denied(GatewayError):
    """A request refused after its denial was audited."""

    def __init__(self, status: int, code: str, public_message: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.public_message = public_message
        self.reason = reason


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """aiohttp answers `Expect: 100-continue` before any handler runs, i.e. before identity and
    authorisation; this one defers the answer to the forwarder, so a client that is refused never
    uploads its body. Any other expectation is 417 (RFC 9110 §10.1.1)."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        return None
    return error_response(
        417, "expectation_failed", "only Expect: 100-continue is supported", uuid.uuid4().hex
    )


@dataclass(slots=True)
class _Context:
    """What is known about one request so far; becomes its audit event."""

    request_id: str
    route: Route
    method: str
    path: str
    client_ip: str
    action: str
    ts_us: int
    t0: float
    subjects: list[str]
    principal: Principal | None = None
    decision: Decision | None = None


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        *,
        routes: RouteTable,
        verifier: TokenVerifier,
        policies: PolicyStore,
        spool: Spool,
        forwarder: Forwarder,
        metrics: Metrics,
        role_tracker: RoleTracker | None = None,
        break_glass: BreakGlass | None = None,
    ) -> None:
        self._cfg = cfg
        self._routes = routes
        self._verifier = verifier
        self._policies = policies
        self._spool = spool
        self._forwarder = forwarder
        self._metrics = metrics
        self._roles = role_tracker
        self._break_glass = break_glass
        self._instance = cfg.instance_id

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request[REQUEST_ID]
        try:
            path = canonical_path(request.raw_path)
            route = self._routes.match(path, request.method)
        except BadRequest as e:
            # 400 before routing: no route, category or user is known, so there is no event to
            # audit; the refusal is counted by reason (a burst is worth an alert).
            self._metrics.requests.labels("-", "deny", "400").inc()
            self._metrics.denials.labels("-", e.reason).inc()
            raise
        if route is None:
            self._metrics.requests.labels("-", "no_route", "404").inc()
            raise Denied(404, "not_found", "no route for this path", "no_route")
        ctx = _Context(
            request_id=request_id,
            route=route,
            method=request.method,
            path=path,
            client_ip=client_address(request, self._cfg.proxy.trusted_proxies),
            action=route.actions.get(request.method, ""),
            ts_us=time.time_ns() // 1000,
            t0=time.perf_counter(),
            subjects=[],
        )
        if not ctx.action:
            await self._deny(
                ctx,
                405,
                "method_not_allowed",
                "this method is not allowed here",
                "method_not_allowed",
            )
        try:
            ctx.subjects = subject_ids(route, path, request.query)
        except BadRequest as e:
            await self._deny(ctx, 400, "bad_request", "malformed request", e.reason)
        except Exception:
            log.exception("subject extraction failed")
            await self._deny(ctx, 500, "internal_error", "internal error", "subject_error")

        try:
            ctx.principal = await self._verifier.verify(
                bearer_token(request.headers.get("Authorization"))
            )
        except AuthenticationError as e:
            await self._deny(ctx, 401, "unauthenticated", e.public_message, e.reason)
        except Exception:
            log.exception("identity check failed")
            await self._deny(ctx, 500, "internal_error", "internal error", "identity_error")

        if self._roles is not None:
            await self._record_role_change(ctx.principal)

        try:
            ctx.decision = self._policies.engine.decide(
                ctx.principal.user,
                ctx.principal.roles,
                route.system,
                route.category,
                ctx.action,
                route.purpose,
            )
        except Exception:
            log.exception("authorisation failed")
            await self._deny(ctx, 500, "internal_error", "internal error", "authz_error")
        reason = "rule"
        if not ctx.decision.allowed and self._break_glass is not None:
            grant = (route.system, route.category, ctx.action, route.purpose)
            session = self._break_glass.allows(ctx.principal.user, grant)
            if session is not None:  # allowed only by an emergency session: flagged and counted
                ctx.decision = Decision(
                    True, f"break-glass:{session.session_id}", ctx.decision.policy_version
                )
                reason = "break_glass"
                self._metrics.break_glass_accesses.labels(route.name).inc()
        if not ctx.decision.allowed:
            await self._deny(
                ctx,
                403,
                "forbidden",
                "your job function does not permit this access",
                "no_matching_rule",
            )

        event = self._event(ctx, "allow", reason)
        if route.carries_personal_data:
            await self._record(ctx, event, "access")
        return await self._forward(request, ctx, event)

    async def _record_role_change(self, principal: Principal) -> None:
        """9.2.7: a changed role set from the IdP is recorded before it is used."""
        assert self._roles is not None
        before = self._roles.last(principal.user)
        change = self._roles.observe(
            principal.user, principal.roles, principal.issued_at, self._policies.engine.version
        )
        if change is None:
            return
        try:
            await self._spool.append(change.record())
        except SpoolUnavailable:
            self._roles.forget(principal.user, before)  # try again with the next request
            raise

    async def _forward(
        self, request: web.Request, ctx: _Context, event: AccessEvent
    ) -> web.StreamResponse:
        assert ctx.principal is not None
        route = ctx.route
        exchange = Exchange()
        self._metrics.overhead.labels(route.name).observe(time.perf_counter() - ctx.t0)
        injected = {
            "X-PD-User": ctx.principal.user,
            "X-PD-Roles": ",".join(ctx.principal.roles),
            "X-Request-Id": ctx.request_id,
        }
        recorded = False

        async def record_outcome(outcome: str) -> None:
            nonlocal recorded
            if recorded or not route.carries_personal_data:
                return
            recorded = True
            await self._record(ctx, self._outcome(ctx, event, exchange, outcome), "outcome")

        try:
            resp = await self._forwarder.forward(
                request,
                route,
                request_id=ctx.request_id,
                injected=injected,
                exchange=exchange,
                before_last_chunk=lambda: record_outcome(COMPLETE),
            )
        except UpstreamError as e:
            self._metrics.upstream_errors.labels(route.name, e.reason).inc()
            self._metrics.upstream.labels(route.name).observe(exchange.upstream_seconds)
            if exchange.response is None:
                exchange.status = e.status
                await record_outcome(e.reason)
                self._count(route, "allow", e.status)
                raise
            await record_outcome(e.reason)  # headers already sent: cut the connection short
            self._count(route, "allow", exchange.status)
            return self._abort(request, exchange.response)
        except ConnectionError:
            await record_outcome("client_aborted")
            self._count(route, "allow", exchange.status)
            return self._abort(request, exchange.response)
        except SpoolUnavailable:
            # The outcome could not be recorded: the last chunk is withheld (no audit, no access).
            self._count(route, "allow", exchange.status)
            return self._abort(request, exchange.response)
        except Exception:
            # A bug between the decision and the end of the response: the access is on record;
            # record that it ended in an error rather than leave its outcome unknown.
            exchange.status = exchange.status or 500
            with contextlib.suppress(SpoolUnavailable):
                await record_outcome("gateway_error")
            raise
        self._metrics.upstream.labels(route.name).observe(exchange.upstream_seconds)
        self._count(route, "allow", exchange.status)
        return resp

    @staticmethod
    def _abort(request: web.Request, resp: web.StreamResponse | None) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        return resp if resp is not None else web.Response(status=499)

    def _count(self, route: Route, decision: str, status: int) -> None:
        self._metrics.requests.labels(route.name, decision, str(status)).inc()

    async def _deny(
        self, ctx: _Context, status: int, code: str, message: str, reason: str
    ) -> NoReturn:
        """Audit a refusal (for routes with personal data) and raise it as the response."""
        self._count(ctx.route, "deny", status)
        self._metrics.denials.labels(ctx.route.name, reason).inc()
        if ctx.route.carries_personal_data:
            event = self._event(ctx, "deny", reason)
            event.status = status
            event.outcome = COMPLETE
            event.duration_us = int((time.perf_counter() - ctx.t0) * 1e6)
            await self._record(ctx, event, "access")
        raise Denied(status, code, message, reason)

    async def _record(self, ctx: _Context, event: AccessEvent | Outcome, kind: str) -> None:
        """Append to the spool; any failure is SpoolUnavailable (503): no audit, no access."""
        try:
            await self._spool.append(event.record(), admission=kind == "access")
        except SpoolUnavailable as e:
            self._metrics.denials.labels(ctx.route.name, "audit_unavailable").inc()
            log.error(
                "audit record refused; request refused",
                extra={"reason": e.reason, "route": ctx.route.name},
            )
            raise
        except Exception as e:  # a bug in the audit step fails closed, like a full disk
            self._metrics.denials.labels(ctx.route.name, "audit_unavailable").inc()
            log.exception("audit record failed; request refused")
            raise SpoolUnavailable("audit_error") from e
        self._metrics.audit_record(kind)

    def _event(self, ctx: _Context, decision: str, reason: str) -> AccessEvent:
        p = ctx.principal
        d = ctx.decision
        return AccessEvent(
            event_id=uuid.uuid4().hex,
            ts_us=ctx.ts_us,
            instance=self._instance,
            seq=self._spool.next_seq(),
            request_id=ctx.request_id,
            user=p.user if p else "",
            roles=list(p.roles) if p else [],
            client_ip=ctx.client_ip,
            method=ctx.method,
            path=ctx.path,
            route=ctx.route.name,
            system=ctx.route.system,
            category=ctx.route.category,
            action=ctx.action,
            subject_ids=ctx.subjects,
            decision=decision,
            reason=reason,
            rule=d.rule if d else "",
            policy_version=d.policy_version if d else self._policies.engine.version,
        )

    @staticmethod
    def _outcome(ctx: _Context, event: AccessEvent, exchange: Exchange, outcome: str) -> Outcome:
        return Outcome(
            event_id=event.event_id,
            seq=event.seq,
            status=exchange.status,
            bytes_in=exchange.bytes_in,
            bytes_out=exchange.bytes_out,
            duration_us=int((time.perf_counter() - ctx.t0) * 1e6),
            upstream_us=int(exchange.upstream_seconds * 1e6),
            outcome=outcome,
        )
