"""The admin port: /metrics, /healthz, /readyz (and the admin API that app.py adds).

SECURITY: a separate listener, on loopback by default, never routed from the proxy port. Its
error boundary is the proxy's (``gateway.errors_http``): every error, the router's 404/405 and an
unexpected exception's 500 included, is JSON with the request id and no exception text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors_http import error_middleware
from gateway.metrics import Metrics

ReadinessCheck = Callable[[], dict[str, bool]]


def build_admin_app(
    metrics: Metrics,
    readiness: ReadinessCheck,
    record_refusals: Callable[..., Awaitable[web.StreamResponse]] | None = None,
) -> web.Application:
    """``record_refusals``: a middleware inside the error boundary that records each refusal of
    the admin APIs in the audit trail, as the proxy's are."""

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
    app = web.Application(middlewares=[boundary, *([record_refusals] if record_refusals else [])])
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
