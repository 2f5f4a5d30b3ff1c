"""Composition root: builds the proxy app and the admin app from a Config, and runs them.

Start-up order (cleanup_ctx, stopped in reverse): the audit spool first, so it is the last thing
closed — every in-flight request has drained and every record is flushed before it stops; then
the upstream client session and the JWKS keys, then the pipeline that uses them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.admin import build_admin_app
from gateway.audit.spool import Spool, SpoolHooks
from gateway.authz import PolicyStore
from gateway.config import Config
from gateway.errors import PolicyError
from gateway.identity import KeySet, TokenVerifier, file_fetcher, url_fetcher
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, error_middleware
from gateway.proxy import Forwarder
from gateway.routing import RouteTable

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything the apps share; one per process."""

    cfg: Config
    metrics: Metrics
    spool: Spool
    policies: PolicyStore
    keys: KeySet | None = None
    pipeline: Pipeline | None = None

    def readiness(self) -> dict[str, bool]:
        return {
            "policy_loaded": self.policies.engine is not None,
            "spool_writable": self.spool.writable,
            "jwks_loaded": self.keys is not None and self.keys.loaded,
        }

    def reload_policy(self) -> bool:
        """Reload the policy files; an invalid policy is refused and the old one stays in force."""
        try:
            engine = self.policies.reload()
        except PolicyError as e:
            self.metrics.policy_reloads.labels("refused").inc()
            log.error(
                "policy reload refused; previous policy stays in force", extra={"error": str(e)}
            )
            return False
        self.metrics.policy_reloads.labels("ok").inc()
        self.metrics.set_policy(engine.version, engine.rule_count)
        return True


GATEWAY = web.AppKey("gateway", Gateway)


def spool_hooks(metrics: Metrics) -> SpoolHooks:
    return SpoolHooks(
        fsync_seconds=metrics.spool_fsync.observe,
        pending=metrics.spool_pending.set,
        written=lambda records, nbytes: metrics.spool_bytes_written.inc(nbytes),
        error=lambda reason: metrics.spool_errors.labels(reason).inc(),
        healthy=lambda ok: metrics.spool_healthy.set(1 if ok else 0),
    )


def build(
    cfg: Config, registry: CollectorRegistry | None = None
) -> tuple[web.Application, web.Application]:
    """The proxy app and the admin app. Loads the policy now (PolicyError if it is invalid)."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    a = cfg.audit
    spool = Spool(
        a.spool_dir,
        durability=a.durability,
        batch_interval_ms=a.batch_interval_ms,
        segment_max_bytes=a.segment_max_bytes,
        max_pending=a.max_pending,
        hooks=spool_hooks(metrics),
    )
    policies = PolicyStore(
        cfg.authz.model,
        cfg.authz.policy,
        cache_size=cfg.authz.decision_cache_size,
        on_cache=metrics.decision_cache_result,
    )
    metrics.set_policy(policies.engine.version, policies.engine.rule_count)
    gw = Gateway(cfg=cfg, metrics=metrics, spool=spool, policies=policies)

    proxy_app = web.Application(middlewares=[error_middleware(metrics=metrics)])
    proxy_app[GATEWAY] = gw
    proxy_app.cleanup_ctx.append(_spool_ctx)
    proxy_app.cleanup_ctx.append(_pipeline_ctx)
    proxy_app.router.add_route("*", "/{tail:.*}", _handle)
    admin_app = build_admin_app(metrics, gw.readiness)
    admin_app[GATEWAY] = gw
    return proxy_app, admin_app


async def _handle(request: web.Request) -> web.StreamResponse:
    pipeline = request.app[GATEWAY].pipeline
    assert pipeline is not None, "pipeline is set up before the site starts"
    return await pipeline.handle(request)


async def _spool_ctx(app: web.Application) -> AsyncIterator[None]:
    spool = app[GATEWAY].spool
    await asyncio.to_thread(spool.open)
    yield
    spool.close()  # on the loop's thread: flushes its buffer, then joins the sync thread


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    cfg = gw.cfg
    connector = aiohttp.TCPConnector(limit=cfg.proxy.max_connections, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )
    ident = cfg.identity
    fetch = (
        url_fetcher(session, ident.jwks_url)
        if ident.jwks_url
        else file_fetcher(str(ident.jwks_file))
    )
    keys = KeySet(
        fetch,
        ident.jwks_refresh_min_interval_seconds,
        ident.jwks_cache_seconds,
        clock=asyncio.get_running_loop().time,
    )
    try:
        await keys.refresh()
    except Exception as e:
        log.error(
            "initial JWKS load failed; not ready until it succeeds",
            extra={"error": type(e).__name__},
        )
    gw.metrics.jwks_refreshes.set_function(lambda: keys.refreshes)
    gw.keys = keys
    gw.pipeline = Pipeline(
        cfg,
        routes=RouteTable(cfg.routes),
        verifier=TokenVerifier(ident, keys, on_cache=gw.metrics.token_cache_result),
        policies=gw.policies,
        spool=gw.spool,
        forwarder=Forwarder(
            session,
            trusted=cfg.proxy.trusted_proxies,
            forward_authorization=cfg.proxy.forward_authorization,
            connect_timeout=cfg.proxy.connect_timeout_seconds,
            read_timeout=cfg.proxy.read_timeout_seconds,
        ),
        metrics=gw.metrics,
    )
    yield
    await session.close()


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run both listeners until SIGTERM/SIGINT; SIGHUP reloads the policy.

    Shutdown drains in-flight requests (up to proxy.shutdown_timeout_seconds), then flushes and
    closes the spool.
    """
    proxy_app, admin_app = build(cfg)
    gw = proxy_app[GATEWAY]
    proxy_runner = web.AppRunner(
        proxy_app, shutdown_timeout=cfg.proxy.shutdown_timeout_seconds, access_log=None
    )
    admin_runner = web.AppRunner(admin_app, access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gw.reload_policy)
    try:
        await web.TCPSite(proxy_runner, cfg.proxy_listen.host, cfg.proxy_listen.port).start()
        await web.TCPSite(admin_runner, cfg.admin_listen.host, cfg.admin_listen.port).start()
        log.info(
            "pd-gateway serving",
            extra={
                "proxy": f"{cfg.proxy_listen.host}:{cfg.proxy_listen.port}",
                "admin": f"{cfg.admin_listen.host}:{cfg.admin_listen.port}",
                "policy_version": gw.policies.engine.version,
                "durability": cfg.audit.durability,
            },
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        log.info("stopped; audit spool flushed")
