"""The request path, in order, and the one place errors become responses.

Order, and why:
  1. request id            — every response and log line carries it, errors included.
  2. canonical path, route — routing and authorisation see exactly what is forwarded; a refusal
                             (400, 404) is decided here but answered only after identity, so
                             routes are not enumerable anonymously and the refusal is attributed.
                             Here too: a Host outside proxy.public_hosts (decision 022), an
                             upgrade other than WebSocket, or one on a route that does not
                             declare it (decision 024).
  3. identity              — bearer JWT → Principal, or the browser session cookie when the
                             request has no Authorization header (gateway/web/browser.py). Without
                             either: 401 (a browser navigation: redirect to login), counted in
                             the anonymous refusal summaries (docs/decisions/013). A
                             cookie-authenticated state-changing request that is not
                             same-origin is refused here, recorded with the principal (CSRF).
  4. refusals of step 2    — recorded with the principal (an employee probing paths is visible).
  5. action, subject ids   — what the request does and to whom, from the route's declaration.
  6. access-rights changes — a role set the IdP changed is recorded before it is used (9.2.7).
  7. authorisation         — job function × system × category × action, deny by default (4.4).
  8. audit the decision    — durable in the spool *before* the upstream sees anything (9.1.8);
                             if it cannot be recorded the request is refused (503).
  9. forward               — streaming; the outcome is recorded before the last chunk goes out.
                             A WebSocket is relayed instead (web/sockets.py); its outcome is
                             recorded when it closes.
Every failure inside 3-8 is a deny that is itself recorded; nothing in that span fails open.
Every refusal with a valid token is an event of its own, on any route.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from aiohttp import web

from gateway.audit.events import COMPLETE, PENDING, AccessEvent, Outcome
from gateway.audit.recorder import Pending, Recorder
from gateway.audit.refusals import AnonymousRefusals
from gateway.config.model import Config, Route
from gateway.core.errors import AuthenticationError, BadRequest, Refused, SpoolUnavailable
from gateway.core.ids import new_id
from gateway.core.metrics import Metrics
from gateway.forwarding.addresses import public_hosts
from gateway.forwarding.forwarder import (
    ClientAborted,
    Exchange,
    ExchangeError,
    Forwarder,
    UpstreamError,
)
from gateway.forwarding.headers import check_request_headers, client_address, public_origin
from gateway.forwarding.method_override import effective_method
from gateway.forwarding.response_subjects import Found, ResponseCopy, extract
from gateway.forwarding.routing import (
    RouteTable,
    canonical_path,
    refuse_input_names_in_cookies,
    subject_ids,
)
from gateway.forwarding.websocket import Closed, WebSocketRelay, upgrade_kind
from gateway.governance.access_rights import AccessRights
from gateway.governance.blocks import SubjectBlocks
from gateway.governance.subject_hash import SubjectHasher
from gateway.identity.tokens import Principal, TokenVerifier, bearer_token
from gateway.policy.break_glass import BreakGlass
from gateway.policy.engine import Decision, PolicyStore
from gateway.web.boundary import REQUEST_ID, error_response
from gateway.web.browser import BrowserLogin
from gateway.web.sockets import serve_socket

log = logging.getLogger(__name__)
T = TypeVar("T")


class _BlockedInResponse(Exception):
    """A response named a blocked subject: its last chunk is withheld (6.5)."""


class Denied(Refused):
    """A request refused after its denial was audited."""


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """aiohttp answers `Expect: 100-continue` before any handler runs, i.e. before identity and
    authorisation; this one defers the answer to the forwarder, so a client that is refused never
    uploads its body. Any other expectation is 417 (RFC 9110 §10.1.1)."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        return None
    return error_response(
        417, "expectation_failed", "only Expect: 100-continue is supported", new_id()
    )


@dataclass(slots=True)
class _Context:
    """What is known about one request so far; becomes its audit event."""

    request_id: str
    method: str
    path: str
    query: str  # the raw query string, as forwarded: evidence of what was asked (9.1.8)
    client_ip: str
    ts_us: int
    t0: float
    route: Route | None = None
    action: str = ""
    subjects: list[str] = field(default_factory=list)
    principal: Principal | None = None
    decision: Decision | None = None
    auth: str = ""  # bearer | session
    upgrade: str | None = None  # "websocket" when the request asks for one (decision 024)
    session: str = ""  # the browser session, as a keyed hash

    @property
    def route_name(self) -> str:
        return self.route.name if self.route is not None else "-"


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        *,
        routes: RouteTable,
        verifier: TokenVerifier,
        policies: PolicyStore,
        recorder: Recorder,
        forwarder: Forwarder,
        metrics: Metrics,
        access_rights: AccessRights | None = None,
        break_glass: BreakGlass | None = None,
        anonymous: AnonymousRefusals | None = None,
        browser: BrowserLogin | None = None,
        blocks: SubjectBlocks | None = None,
        hasher: SubjectHasher | None = None,
    ) -> None:
        self._cfg = cfg
        self._routes = routes
        self._verifier = verifier
        self._policies = policies
        self._recorder = recorder
        self._forwarder = forwarder
        self._metrics = metrics
        self._requests: dict[tuple[str, str, int], Any] = {}  # (route, decision, status) → series
        self._rights = access_rights
        self._break_glass = break_glass
        self._anonymous = anonymous
        self._browser = browser
        self._blocks = blocks
        self._hasher = hasher if hasher is not None else SubjectHasher([])
        self._hashing = self._hasher.enabled  # without a key, ids are recorded as they are
        self._public_hosts = public_hosts(cfg.proxy.public_hosts)
        self._trusted = cfg.proxy.trusted_proxies
        self._strip = cfg.proxy.strip_headers
        self._sockets = WebSocketRelay(
            forwarder,
            idle_timeout=cfg.proxy.websocket_idle_timeout_seconds,
            max_duration=cfg.proxy.websocket_max_duration_seconds,
            max_message_bytes=cfg.proxy.websocket_max_message_bytes,
        )

    async def close(self) -> None:
        await self._forwarder.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        ctx = _Context(  # positional: keywords cost the request path (bench/instructions.py)
            request[REQUEST_ID],  # request_id
            request.method,  # method
            raw_path,  # path
            raw_query,  # query
            client_address(request, self._trusted),  # client_ip
            time.time_ns() // 1000,  # ts_us
            time.perf_counter(),  # t0
        )
        refused: BadRequest | None = None
        try:
            ctx.path = canonical_path(request.raw_path)
            check_request_headers(request.headers, self._strip)
            if self._public_hosts is not None:
                origin = public_origin(request, self._trusted)
                if not self._public_hosts & {origin.host, f"{origin.host}:{origin.port}"}:
                    raise BadRequest("unknown_host")  # decision 022
            if request.body_exists and request.method in ("GET", "HEAD"):
                # Rails and Laravel read a body's parameters (a subject id, `_method`) on GET
                # too; nothing the gateway decides on may come from there (decision 034).
                raise BadRequest("body_on_get")
            ctx.upgrade = upgrade_kind(request.headers)
            if ctx.upgrade == "other":  # h2c, TLS/1.0, …: never forwarded (decision 024)
                raise BadRequest("upgrade_not_supported")
            ctx.route = self._routes.match(ctx.path, request.method)
        except BadRequest as e:
            refused = e  # answered after identity (step 4)

        try:
            ctx.principal = await self._identify(request, ctx)
        except AuthenticationError as e:
            self._refuse_anonymous(ctx, 401, e.reason)
            browser = self._browser
            if (
                browser is not None
                and browser.accepts(ctx.route)
                and "Authorization" not in request.headers
            ):
                raise await browser.unauthenticated(request, e) from None
            raise Denied(401, "unauthenticated", e.public_message, e.reason) from None
        except SpoolUnavailable:
            raise
        except Exception:
            log.exception("identity check failed")
            await self._deny(ctx, 500, "internal_error", "internal error", "identity_error")
        if ctx.auth == "session" and self._browser is not None:
            csrf = self._browser.cross_site(request, upgrade=ctx.upgrade is not None)
            if csrf is not None:
                await self._deny(ctx, 403, "cross_site_request", "cross-site request refused", csrf)

        if refused is not None:
            await self._deny(ctx, 400, "bad_request", "malformed request", refused.reason)
        route = ctx.route
        if route is None:
            await self._deny(ctx, 404, "not_found", "no route for this path", "no_route")
        if ctx.upgrade is not None and not (route.websocket and self._sockets.can_upgrade(request)):
            reason = "websocket_not_allowed" if not route.websocket else "bad_websocket_handshake"
            await self._deny(ctx, 400, reason, "this path takes no WebSocket connection", reason)
        try:  # what the upstream will do is what is authorised and recorded (9.1.8)
            ctx.method = effective_method(request.method, request.headers.items(), ctx.query, route)
            if ctx.method != request.method:  # overridden (a POST): decision 011
                if ctx.method == "HEAD":  # answered with no body to a POST relayed as one
                    raise BadRequest("method_override")
                if ctx.method == "GET" and request.body_exists:
                    raise BadRequest("body_on_get")  # as for a GET with a body, above
                if self._routes.match(ctx.path, ctx.method) is not route:
                    # The upstream routes by the method it acts on: `POST /hr/export` overridden
                    # to GET runs the export route's handler, not this route's.
                    raise BadRequest("method_override_route")
            ctx.action = route.actions.get(ctx.method, "")
        except BadRequest as e:
            await self._deny(ctx, 400, "bad_request", "malformed request", e.reason)
        if not ctx.action:
            await self._deny(
                ctx,
                405,
                "method_not_allowed",
                "this method is not allowed here",
                "method_not_allowed",
            )
        try:
            ctx.subjects = subject_ids(route, ctx.path, ctx.query)
            if route.subject is not None and route.subject.input_names:  # decision 039
                refuse_input_names_in_cookies(route.subject, request.headers.getall("Cookie", ()))
        except BadRequest as e:
            await self._deny(ctx, 400, "bad_request", "malformed request", e.reason)
        except Exception:
            log.exception("subject extraction failed")
            await self._deny(ctx, 500, "internal_error", "internal error", "subject_error")
        if self._rights is not None and not self._rights.roles_as_last_seen(ctx.principal):
            try:
                await self._rights.observe_roles(ctx.principal)
            except SpoolUnavailable:
                raise
            except Exception:
                log.exception("recording a role change failed")
                await self._deny(ctx, 500, "internal_error", "internal error", "role_change_error")

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
                self._metrics.child(self._metrics.break_glass_accesses, route.name).inc()
        if not ctx.decision.allowed:
            await self._deny(
                ctx,
                403,
                "forbidden",
                "your job function does not permit this access",
                "no_matching_rule",
            )
        # After the decision: a job function that may not see this data at all learns nothing
        # of whether its subject is blocked (6.5) from a 423.
        if self._blocked_for(ctx, ctx.subjects):
            await self._deny(
                ctx,
                423,
                "subject_blocked",
                "this data subject's data is blocked",
                "subject_blocked",
            )

        event = self._event(ctx, "allow", reason)
        pending = None
        if route.carries_personal_data:
            pending = await self._recording(ctx, "access", self._recorder.begin(event))
        if ctx.upgrade is not None:
            return await self._websocket(request, ctx, pending)
        return await self._forward(request, ctx, pending)

    async def _identify(self, request: web.Request, ctx: _Context) -> Principal:
        """One rule: an Authorization header decides alone (bearer); without one, the session
        cookie on routes that accept sessions (gateway/web/browser.py)."""
        header = request.headers.get("Authorization")
        if header is None and self._browser is not None and self._browser.accepts(ctx.route):
            principal, ctx.session = await self._browser.authenticate(request)
            ctx.auth = "session"
            return principal
        principal = await self._verifier.verify(bearer_token(header))
        ctx.auth = "bearer"
        return principal

    def _blocked_for(self, ctx: _Context, subjects: list[str]) -> bool:
        """6.5, 6.6: a blocked subject's data is not processed, except by the job functions the
        policy lets handle the verification (a `block` grant on this system and category)."""
        route, p = ctx.route, ctx.principal
        if self._blocks is None or not subjects or route is None or p is None:
            return False
        forms = [c for s in subjects for c in self._hasher.candidates(s)]
        if self._blocks.blocked(forms) is None:
            return False
        return not self._policies.engine.decide(
            p.user, p.roles, route.system, route.category, "block", route.purpose
        ).allowed

    def _refuse_anonymous(self, ctx: _Context, status: int, reason: str) -> None:
        """A refusal with no valid token: counted in this window's summaries, not recorded
        one by one (docs/decisions/013-anonymous-refusals.md)."""
        self._metrics.child(self._metrics.requests, ctx.route_name, "deny", str(status)).inc()
        self._metrics.child(self._metrics.denials, ctx.route_name, reason).inc()
        if self._anonymous is not None:
            self._anonymous.count(ctx.route_name, reason, status, ctx.client_ip, ctx.request_id)

    async def _forward(
        self, request: web.Request, ctx: _Context, pending: Pending | None
    ) -> web.StreamResponse:
        assert ctx.principal is not None
        route = ctx.route
        assert route is not None
        exchange = Exchange()
        if route.response_subjects is not None and ctx.method != "HEAD":
            exchange.copy = ResponseCopy(route.response_subjects)  # 6.1.1: whom a list returned
        self._metrics.overhead.labels(route.name).observe(time.perf_counter() - ctx.t0)
        injected = self._injected(ctx)
        # Not a closure: one is made for every request (bench/instructions.py).
        record_outcome = functools.partial(self._record_outcome, ctx, exchange, pending)

        try:
            resp = await self._forwarder.forward(
                request,
                route,
                request_id=ctx.request_id,
                injected=injected,
                exchange=exchange,
                before_last_chunk=functools.partial(record_outcome, COMPLETE),
                strip=self._strip,
            )
        except ClientAborted:  # hung up mid-body: the client's doing, not an upstream error
            self._metrics.child(self._metrics.client_errors, route.name, "client_aborted").inc()
            exchange.status = exchange.status or 499
            await record_outcome("client_aborted")
            self._count(route, "allow", exchange.status)
            return self._abort(request, exchange.response)
        except ExchangeError as e:
            if isinstance(e, UpstreamError):
                self._metrics.child(self._metrics.upstream_errors, route.name, e.reason).inc()
                self._metrics.upstream.labels(route.name).observe(exchange.upstream_seconds)
            else:  # the client's body: too large, too slow, a method override in it
                self._metrics.child(self._metrics.client_errors, route.name, e.reason).inc()
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
        except (SpoolUnavailable, _BlockedInResponse) as e:
            # The outcome could not be recorded, or the response named a blocked subject: the
            # last chunk is withheld (no audit, no access) — the whole response, answered as a
            # refusal, when none of it was sent yet.
            if exchange.response is None and isinstance(e, SpoolUnavailable):
                self._count(route, "allow", 503)
                raise
            self._count(route, "allow", exchange.status)
            if exchange.response is not None:
                return self._abort(request, exchange.response)
            raise Denied(  # the 423 record_outcome put on record
                exchange.status,
                "subject_blocked",
                "this data subject's data is blocked",
                "subject_blocked",
            ) from None
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

    async def _record_outcome(
        self, ctx: _Context, exchange: Exchange, pending: Pending | None, outcome: str
    ) -> None:
        """A forwarded request's outcome, recorded once: the forwarder awaits it before the last
        chunk goes out; the error paths of ``_forward`` give their reason."""
        if pending is None or pending.finished:  # None: a route without personal data
            return
        found = None  # 6.1.1: whom a whole, successful list response named
        if exchange.copy is not None and outcome == COMPLETE and 200 <= exchange.status < 300:
            found = extract(exchange.copy)
        # 6.5: a list response naming a blocked subject is refused: 423 when nothing of it was
        # sent (a small response, read whole first), else it loses its last chunk and the
        # connection is cut (headers and status are gone already). Recorded as such.
        blocked = found is not None and self._blocked_for(ctx, found.subjects)
        if blocked:
            self._metrics.child(self._metrics.denials, ctx.route_name, "subject_blocked").inc()
        await self._recording(
            ctx, "outcome", self._finish(ctx, exchange, pending, outcome, found, blocked)
        )
        if blocked:
            raise _BlockedInResponse

    @staticmethod
    def _injected(ctx: _Context) -> dict[str, str]:
        assert ctx.principal is not None
        return {
            "X-PD-User": ctx.principal.user,
            "X-PD-Roles": ",".join(ctx.principal.roles),
            "X-Request-Id": ctx.request_id,
        }

    async def _websocket(
        self, request: web.Request, ctx: _Context, pending: Pending | None
    ) -> web.StreamResponse:
        """A WebSocket whose access is on record: relayed, then its outcome recorded."""
        assert ctx.route is not None and ctx.principal is not None

        async def record(status: int, closed: Closed, outcome: str) -> None:
            await self._socket_outcome(ctx, pending, status, closed, outcome)

        browser = self._browser if ctx.auth == "session" else None
        resp, status = await serve_socket(
            self._sockets,
            request,
            ctx.route,
            ctx.principal,
            injected=self._injected(ctx),
            cfg=self._cfg,
            browser=browser,
            metrics=self._metrics,
            record=record,
        )
        self._count(ctx.route, "allow", status)
        return resp

    async def _socket_outcome(
        self, ctx: _Context, pending: Pending | None, status: int, closed: Closed, outcome: str
    ) -> None:
        """The one place a WebSocket's outcome is recorded (decision 024)."""
        if pending is None or pending.finished:  # a route without personal data
            return
        exchange = Exchange(status=status, bytes_in=closed.bytes_in, bytes_out=closed.bytes_out)
        exchange.upstream_seconds = closed.seconds
        try:
            await self._recording(ctx, "outcome", self._finish(ctx, exchange, pending, outcome))
        except SpoolUnavailable:
            # The socket is over: nothing is left to refuse. The access is on record; the
            # outcome's loss is logged and counted (audit_unavailable) by _recording.
            if status != 101:
                raise

    @staticmethod
    def _abort(request: web.Request, resp: web.StreamResponse | None) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        return resp if resp is not None else web.Response(status=499)

    def _count(self, route: Route, decision: str, status: int) -> None:
        self._count_route(route.name, decision, status)

    def _count_route(self, route: str, decision: str, status: int) -> None:
        # pdgw_requests_total's series, found by a plain key (the loop's counters: core/metrics)
        series = self._requests.get((route, decision, status))
        if series is None:
            series = self._requests[route, decision, status] = self._metrics.requests.labels(
                route, decision, str(status)
            )
        series.inc()

    async def _deny(
        self, ctx: _Context, status: int, code: str, message: str, reason: str
    ) -> NoReturn:
        """Record a refusal and raise it as the response. Every refusal reached here has a
        principal or happened inside identity: it is an event of its own, on any route."""
        self._count_route(ctx.route_name, "deny", status)
        self._metrics.denials.labels(ctx.route_name, reason).inc()
        event = self._event(ctx, "deny", reason)
        duration = int((time.perf_counter() - ctx.t0) * 1e6)
        await self._recording(ctx, "access", self._recorder.refuse(event, status, reason, duration))
        raise Denied(status, code, message, reason)

    async def _recording(self, ctx: _Context, kind: str, write: Awaitable[T]) -> T:
        """Await one write of the recorder; any failure is SpoolUnavailable (503): no audit, no
        access."""
        try:
            result = await write
        except SpoolUnavailable as e:
            self._metrics.child(self._metrics.denials, ctx.route_name, "audit_unavailable").inc()
            log.error(
                "audit record refused; request refused",
                extra={"reason": e.reason, "route": ctx.route_name},
            )
            raise
        except Exception as e:  # a bug in the audit step fails closed, like a full disk
            self._metrics.child(self._metrics.denials, ctx.route_name, "audit_unavailable").inc()
            log.exception("audit record failed; request refused")
            raise SpoolUnavailable("audit_error") from e
        self._metrics.audit_record(kind)
        return result

    def _event(self, ctx: _Context, decision: str, reason: str) -> AccessEvent:
        p = ctx.principal
        d = ctx.decision
        r = ctx.route
        hashed = self._hashing  # 5.3: a subject's id, where it appears, as a keyed hash (015)
        # Positional, in AccessEvent's field order: its 20 keywords cost more than the rest of
        # this method (bench/instructions.py); tests/forwarding/test_proxy.py checks every field.
        return AccessEvent(
            new_id(),  # event_id
            ctx.ts_us,
            ctx.request_id,
            p.user if p else "",  # user
            list(p.roles) if p else [],  # roles
            ctx.client_ip,
            ctx.auth if p else "",  # auth
            ctx.session,
            ctx.method,
            self._hasher.path(r, ctx.path) if hashed else ctx.path,  # path
            self._hasher.query(r, ctx.query) if hashed else ctx.query,  # query
            ctx.route_name,  # route
            r.system if r else "",  # system
            r.category if r else "",  # category
            ctx.action,
            [self._hasher.stored(s) for s in ctx.subjects] if hashed else ctx.subjects,  # ids
            decision,
            reason,
            d.rule if d else "",  # rule
            d.policy_version if d else self._policies.engine.version,  # policy_version
            0,  # status
            0,  # bytes_in
            0,  # bytes_out
            0,  # duration_us
            0,  # upstream_us
            PENDING,  # outcome
            r.purpose if r else "",  # purpose
        )

    def _finish(
        self,
        ctx: _Context,
        exchange: Exchange,
        pending: Pending,
        outcome: str,
        found: Found | None = None,
        blocked: bool = False,
    ) -> Awaitable[Outcome]:
        """The outcome record's write (``Pending.finish``): ``found``, the subjects a list named;
        ``blocked``, one of them is blocked (6.5): recorded so, 423 when nothing was sent."""
        listed: list[str] = []
        count = capped = 0
        if found is not None:
            listed = [self._hasher.stored(s) for s in found.subjects]  # 5.3
            count, capped = found.count, int(found.capped)
        if blocked:
            outcome = "subject_blocked"
            if exchange.response is None:
                exchange.status = 423
        return pending.finish(
            exchange.status,
            int((time.perf_counter() - ctx.t0) * 1e6),  # duration_us
            outcome,
            exchange.bytes_in,
            exchange.bytes_out,
            int(exchange.upstream_seconds * 1e6),  # upstream_us
            listed,  # response_subjects
            count,
            capped,
        )
