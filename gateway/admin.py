"""The admin port: /metrics, /healthz, /readyz.

SECURITY: a separate listener, on loopback by default, never routed from the proxy port.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.metrics import Metrics

ReadinessCheck = Callable[[], dict[str, bool]]


def build_admin_app(metrics: Metrics, readiness: ReadinessCheck) -> web.Application:
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

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
