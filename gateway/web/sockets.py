"""A WebSocket through the pipeline (decision 024), once its upgrade is authorised and its access
recorded: the limits that apply to this socket, the relay, and its outcome handed to the
pipeline's one recording path (``record``) whatever way it ends.

Limits: proxy.websocket_idle_timeout_seconds and websocket_max_duration_seconds for every socket;
a bearer token's expiry; a browser session's absolute timeout and revocation, checked every
oidc.session.revocation_poll_seconds — so a revoked session's sockets close within twice that
(the revocation list is re-read at that interval too) (9.2.7).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config.model import Config, Route
from gateway.core.metrics import Metrics
from gateway.forwarding.forwarder import UpstreamError
from gateway.forwarding.websocket import Closed, WebSocketRelay
from gateway.identity.tokens import Principal
from gateway.web.browser import BrowserLogin

Record = Callable[[int, Closed, str], Awaitable[None]]


async def serve_socket(
    relay: WebSocketRelay,
    request: web.Request,
    route: Route,
    principal: Principal,
    *,
    injected: dict[str, str],
    cfg: Config,
    browser: BrowserLogin | None,
    metrics: Metrics,
    record: Record,
) -> tuple[web.StreamResponse, int]:
    """The socket's response and the status counted for it (101). ``browser``: set when the
    socket is authenticated by a browser session. ``record(status, closed, outcome)`` is called
    exactly once: at close, at a refusal by the upstream, or when the handler is cancelled."""
    oidc = cfg.oidc

    def still_allowed() -> bool:
        return browser is None or browser.still_valid(principal)

    closed = Closed()
    try:
        resp = await relay.relay(
            request,
            route,
            injected=injected,
            strip=cfg.proxy.strip_headers,
            still_allowed=still_allowed,
            check_every=oidc.session.revocation_poll_seconds if oidc is not None else 5.0,
            deadline=None if browser is not None else principal.expires_at,
            closed=closed,
        )
    except UpstreamError as e:
        metrics.child(metrics.upstream_errors, route.name, e.reason).inc()
        await record(e.status, closed, e.reason)
        raise
    except BaseException:  # cancelled (shutdown) or a fault: the socket is over all the same
        await record(101, closed, closed.by or "gateway_error")
        raise
    await record(101, closed, closed.by)
    return resp, 101
