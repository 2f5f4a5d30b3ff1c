"""Composition root: builds the proxy app and the admin app from a Config, and runs them.

Start-up order (cleanup_ctx, stopped in reverse): the shipper (spool → store) first, so it is
the last to stop and ships what the final flush wrote; then the audit spool, closed only after
every in-flight request has drained; then the upstream client session, the JWKS keys and the
pipeline that uses them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import anomalies, listeners, tls
from gateway.access_rights import AccessRights
from gateway.admin import build_admin_app
from gateway.audit.checkpoint import Checkpointer, Signer, load_public_keys
from gateway.audit.events import COMPLETE, AccessEvent, AuthEvent
from gateway.audit.factory import open_store, reader
from gateway.audit.refusals import AnonymousRefusals
from gateway.audit.shipper import Shipper, ShipperMetrics
from gateway.audit.spool import Spool, SpoolHooks
from gateway.audit_api import AuditAPI
from gateway.authz import PolicyStore
from gateway.blocks import StoreOpener, SubjectBlocks
from gateway.break_glass import BreakGlass, load_allowances
from gateway.browser import BrowserLogin, add_pending_cookies
from gateway.config import Config, StoreConfig
from gateway.errors import AuthenticationError
from gateway.identity import KeySet, Principal, TokenVerifier, file_fetcher, url_fetcher
from gateway.metrics import Metrics
from gateway.oidc import OidcClient
from gateway.pipeline import REQUEST_ID, Pipeline, error_middleware, expect_handler
from gateway.policy_api import AdminRefused, break_glass_handler, policy_put_handler
from gateway.proxy import Forwarder, client_address
from gateway.role_changes import RoleTracker
from gateway.routing import RouteTable
from gateway.sessions import RevocationList, SessionCodec
from gateway.subject_hash import SubjectHasher
from gateway.tasks import spawn

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything the apps share; one per process."""

    cfg: Config
    metrics: Metrics
    spool: Spool
    policies: PolicyStore
    rights: AccessRights
    checkpointer: Checkpointer
    anonymous: AnonymousRefusals
    keys: KeySet | None = None
    verifier: TokenVerifier | None = None
    pipeline: Pipeline | None = None
    shipper: Shipper | None = None
    browser: BrowserLogin | None = None
    blocks: SubjectBlocks | None = None
    hasher: SubjectHasher | None = None

    @property
    def break_glass(self) -> BreakGlass:
        return self.rights.break_glass

    def readiness(self) -> dict[str, bool]:
        return {
            "policy_loaded": self.policies.engine is not None,
            "spool_writable": self.spool.writable,
            "jwks_loaded": self.keys is not None and self.keys.loaded,
        }


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
    cfg: Config,
    registry: CollectorRegistry | None = None,
    *,
    ship: bool = True,
    blocks_from: StoreOpener | None = None,
) -> tuple[web.Application, web.Application]:
    """The proxy app and the admin app. Loads the policy now (PolicyError if it is invalid).

    ``ship=False``: no shipper in this process; another one ships its spool. ``blocks_from``:
    where subject blocks are read, if not from the configured store. (A worker's spool is shipped
    by its supervisor, and its blocks are the supervisor's: gateway.worker.)"""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    a = cfg.audit
    spool = Spool(
        a.spool_dir,
        durability=a.durability,
        batch_interval_ms=a.batch_interval_ms,
        segment_max_bytes=a.segment_max_bytes,
        max_pending=a.max_pending,
        max_bytes=a.max_spool_bytes,
        refuse_when_full=a.on_spool_full == "refuse",
        instance=cfg.instance_id,
        hooks=spool_hooks(metrics),
    )
    metrics.spool_bytes.set_function(lambda: spool.size_bytes)
    metrics.spool_backlog.set_function(lambda: spool.backlog_bytes)
    metrics.spool_over_limit.set_function(lambda: 1 if spool.over_limit else 0)
    policies = PolicyStore(
        cfg.authz.model,
        cfg.authz.policy,
        cache_size=cfg.authz.decision_cache_size,
        on_cache=metrics.decision_cache_result,
    )
    metrics.set_policy(policies.engine.version, policies.engine.rule_count)
    rights = AccessRights(
        cfg,
        metrics,
        spool,
        policies,
        BreakGlass(load_allowances(cfg.authz.policy.parent)),
        on_installed=resettle_heap,
    )
    checkpointer = Checkpointer(
        spool,
        Signer.load(a.checkpoint_key_file),
        a.checkpoint_interval_seconds,
        on_checkpoint=metrics.set_checkpoint,
    )
    anonymous = AnonymousRefusals(
        spool.append, window_seconds=a.anonymous_window_seconds, max_keys=a.anonymous_max_keys
    )
    gw = Gateway(cfg, metrics, spool, policies, rights, checkpointer, anonymous)
    gw.hasher = SubjectHasher.from_files(a.subject_key_file, a.subject_previous_key_files)
    gw.blocks = SubjectBlocks(  # 6.5, 6.6
        spool,
        a.spool_dir,
        blocks_from or reader(cfg.store),
        poll_seconds=a.blocks_poll_seconds,
        on_count=metrics.blocked_subjects.set,
    )
    metrics.blocks_view_age.set_function(lambda: gw.blocks.view_age_seconds if gw.blocks else 0)
    metrics.break_glass_active.set_function(lambda: gw.break_glass.active)
    metrics.chain_seq.set_function(lambda: spool.head.seq)
    metrics.ready.set_function(lambda: 1 if all(gw.readiness().values()) else 0)

    proxy_app = web.Application(middlewares=[error_middleware(metrics=metrics)])
    proxy_app[GATEWAY] = gw
    if ship:
        proxy_app.cleanup_ctx.append(_shipper_ctx)
    if cfg.anomalies is not None and cfg.store is not None:  # 9.1.6, 9.1.9, 10.2
        proxy_app.cleanup_ctx.append(
            anomalies.background(cfg.anomalies, cfg.store, cfg.instance_id, metrics)
        )
    proxy_app.cleanup_ctx.append(_spool_ctx)
    proxy_app.cleanup_ctx.append(_blocks_ctx)
    proxy_app.cleanup_ctx.append(_pipeline_ctx)
    if cfg.oidc is not None:
        proxy_app.router.add_route("*", "/_pdgw/{tail:.*}", _browser_pages)
        proxy_app.on_response_prepare.append(add_pending_cookies)
    proxy_app.router.add_route("*", "/{tail:.*}", _handle, expect_handler=expect_handler)
    admin_app = build_admin_app(metrics, gw.readiness, _admin_refusals(gw))

    async def verify(token: str) -> Principal:
        if gw.verifier is None:
            raise AuthenticationError("not_ready")
        return await gw.verifier.verify(token)

    admin_app.router.add_put(
        "/admin/policy",
        policy_put_handler(
            verify=verify,
            admin_roles=cfg.authz.policy_admin_roles,
            model=cfg.authz.model,
            policy=cfg.authz.policy,
            lint=rights.lint_policy,
            apply=rights.apply_policy,
        ),
    )
    admin_app.router.add_post(
        "/admin/break-glass", break_glass_handler(verify=verify, start=rights.start_break_glass)
    )
    admin_app.router.add_get("/checkpoint", _latest_checkpoint)
    AuditAPI(  # 9.2.6: the trail read through this process's store, every query recorded
        verify=verify,
        policies=policies,
        spool=spool,
        open_store=reader(cfg.store),
        trusted=cfg.proxy.trusted_proxies,
        blocks=gw.blocks,
        hasher=gw.hasher,
        purposes_of={r.name: r.purpose for r in cfg.routes},
        public_keys=lambda: load_public_keys([a.checkpoint_key_file]),  # the gateway's own
        on_block=lambda subject, reason: _end_sessions_of_blocked(gw, subject, reason),
    ).register(admin_app)
    admin_app[GATEWAY] = gw
    return proxy_app, admin_app


async def _end_sessions_of_blocked(gw: Gateway, subject: str, reason: str) -> None:
    """A block on a data subject who is also a user (their id is the token's `sub`) ends every
    browser session of theirs, on every replica within the revocation bound (issue 9, 6.5)."""
    if gw.browser is not None:
        await gw.browser.revoke_user(subject, f"subject blocked: {reason}")


_ADMIN_ACTIONS = {"PUT": "update", "POST": "create", "DELETE": "delete"}


def _admin_refusals(gw: Gateway) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Record every refusal of the admin APIs like the proxy's (issue 8 §2): with a valid token,
    an event naming the employee; without one, counted in the anonymous refusal summaries."""

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except AdminRefused as e:
            route = "admin:" + request.path.removeprefix("/admin/")
            client = client_address(request, gw.cfg.proxy.trusted_proxies)
            rid = request[REQUEST_ID]
            if e.principal is None:
                gw.anonymous.count(route, e.reason, e.status, client, rid)
                raise
            raw_path, _, query = request.raw_path.partition("?")
            await gw.spool.append(
                AccessEvent(
                    event_id=uuid.uuid4().hex,
                    ts_us=time.time_ns() // 1000,
                    request_id=rid,
                    user=e.principal.user,
                    roles=list(e.principal.roles),
                    client_ip=client,
                    auth="bearer",
                    session="",
                    method=request.method,
                    path=raw_path,
                    query=query,
                    route=route,
                    system="pd-gateway",
                    category="none",
                    action=_ADMIN_ACTIONS.get(request.method, "read"),
                    subject_ids=[],
                    decision="deny",
                    reason=e.reason,
                    rule="",
                    policy_version=gw.policies.engine.version,
                    status=e.status,
                    outcome=COMPLETE,
                )
            )
            raise

    return record


async def _latest_checkpoint(request: web.Request) -> web.Response:
    """The newest signed head of this instance's audit chain: a copy outside the store, for
    `pd-gateway audit verify --gateway` (it holds no personal data)."""
    cp = request.app[GATEWAY].checkpointer.latest
    if cp is None:
        return web.json_response({"error": "no_checkpoint_yet"}, status=404)
    return web.json_response(cp.as_dict())


async def _browser_pages(request: web.Request) -> web.StreamResponse:
    """The gateway's own login pages (gateway/browser.py), routed before the upstreams."""
    browser = request.app[GATEWAY].browser
    assert browser is not None, "set up before the site starts"
    return await browser.route(request)


async def _handle(request: web.Request) -> web.StreamResponse:
    pipeline = request.app[GATEWAY].pipeline
    assert pipeline is not None, "pipeline is set up before the site starts"
    return await pipeline.handle(request)


def shipper_metrics(metrics: Metrics) -> ShipperMetrics:
    return ShipperMetrics(
        shipped=metrics.shipped.inc,
        batch=metrics.shipper_batches.inc,
        retried=metrics.shipper_retries.inc,
        already_stored=metrics.shipper_already_stored.inc,
        error=lambda kind: metrics.shipper_errors.labels(kind).inc(),
        lag_seconds=metrics.shipper_lag.set,
        store_up=lambda up: metrics.store_up.set(1 if up else 0),
    )


def build_shipper(
    cfg: Config, store_cfg: StoreConfig, metrics: Metrics, on_progress: Callable[[int, int], None]
) -> Shipper:
    return Shipper(
        cfg.audit.spool_dir,
        lambda: open_store(store_cfg),
        batch_max_rows=store_cfg.batch_max_rows,
        batch_max_age=store_cfg.batch_max_age_ms / 1000,
        max_backoff=store_cfg.retry_max_backoff_seconds,
        metrics=shipper_metrics(metrics),
        on_progress=on_progress,
    )


async def _shipper_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    if gw.cfg.store is None:
        log.warning("no audit store configured: events stay in the spool (audit.spool_dir)")
        yield
        return
    shipper = build_shipper(gw.cfg, gw.cfg.store, gw.metrics, gw.spool.shipper_progress)
    await asyncio.to_thread(shipper.start)
    gw.shipper = shipper
    yield
    await asyncio.to_thread(shipper.stop)


async def _spool_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    spool = gw.spool
    await asyncio.to_thread(spool.open)
    await gw.checkpointer.checkpoint()  # the head this run starts from, signed
    tasks = [
        spawn(gw.checkpointer.run(), name="audit-checkpoints"),
        spawn(gw.anonymous.run(), name="anonymous-refusals"),
    ]
    yield
    for task in tasks:
        task.cancel()
    await gw.anonymous.flush()
    await gw.checkpointer.final()  # the last head, signed before the spool closes
    spool.close()  # on the loop's thread: flushes its buffer, then joins the sync thread


async def _blocks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Blocks in force before the first request (6.5); re-read from the store while serving."""
    blocks = app[GATEWAY].blocks
    assert blocks is not None
    await blocks.start()
    task = spawn(blocks.run(), name="subject-blocks")
    yield
    task.cancel()


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    cfg = gw.cfg
    # First: a baseline that cannot be read stops start-up before anything else is opened.
    roles = RoleTracker(cfg.audit.spool_dir)
    connector = aiohttp.TCPConnector(limit=cfg.proxy.max_connections, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )
    ident = cfg.identity
    fetch = (
        url_fetcher(
            session,
            ident.jwks_url,
            ssl_context=tls.client_context(ident.jwks_ca_file) if ident.jwks_ca_file else None,
        )
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
    gw.rights.roles = roles
    gw.verifier = TokenVerifier(ident, keys, on_cache=gw.metrics.token_cache_result)
    if cfg.oidc is not None:
        gw.browser = await _browser_login(gw, session)
    gw.pipeline = Pipeline(
        cfg,
        routes=RouteTable(cfg.routes),
        verifier=gw.verifier,
        policies=gw.policies,
        spool=gw.spool,
        forwarder=Forwarder(
            session,
            trusted=cfg.proxy.trusted_proxies,
            forward_authorization=cfg.proxy.forward_authorization,
            connect_timeout=cfg.proxy.connect_timeout_seconds,
            read_timeout=cfg.proxy.read_timeout_seconds,
            max_body_bytes=cfg.proxy.max_body_bytes,
            body_timeout=cfg.proxy.client_body_timeout_seconds,
            max_response_bytes=cfg.proxy.upstream_max_response_bytes,
            total_timeout=cfg.proxy.upstream_timeout_seconds,
            ssl_contexts={
                name: tls.client_context(t.ca_file, t.client_cert_file, t.client_key_file)
                for name, t in cfg.upstream_tls.items()
            },
            gateway_cookies=gw.browser.cookie_names if gw.browser is not None else frozenset(),
        ),
        metrics=gw.metrics,
        access_rights=gw.rights,
        break_glass=gw.break_glass,
        anonymous=gw.anonymous,
        browser=gw.browser,
        blocks=gw.blocks,
        hasher=gw.hasher,
    )
    reaper = spawn(gw.rights.end_break_glass_sessions(), name="break-glass-ends")
    watcher = None
    if cfg.authz.watch_interval_seconds > 0:
        watcher = spawn(
            gw.rights.watch_policy_files(cfg.authz.watch_interval_seconds), name="policy-watch"
        )
    yield
    if watcher is not None:
        watcher.cancel()
    reaper.cancel()
    await roles.close()  # the baseline, fsynced off the loop
    await session.close()


async def _browser_login(gw: Gateway, http: aiohttp.ClientSession) -> BrowserLogin:
    """OIDC login and sessions (issue 9): discovery now if the provider answers, else at the
    first login."""
    cfg = gw.cfg
    oidc = cfg.oidc
    assert oidc is not None
    s = oidc.session
    client = OidcClient(
        oidc,
        cfg.identity,
        http,
        ssl_context=tls.client_context(oidc.ca_file) if oidc.ca_file else None,
        clock=time.time,
    )
    try:
        await client.discover()
    except Exception as e:
        log.error(
            "OIDC discovery failed; retried at the first login", extra={"error": type(e).__name__}
        )
    codec = SessionCodec.from_file(
        s.key_file,
        idle_timeout=s.idle_timeout_seconds,
        absolute_timeout=s.absolute_timeout_seconds,
        login_timeout=s.login_timeout_seconds,
        clock=time.time,
    )
    trusted = cfg.proxy.trusted_proxies

    async def record(event: AuthEvent) -> None:
        await gw.spool.append(event)

    return BrowserLogin(
        oidc,
        client,
        codec,
        RevocationList(
            s.revocation_file,
            poll=s.revocation_poll_seconds,
            clock=time.time,
            actor=f"gateway:{cfg.instance_id}",
        ),
        record=record,
        metrics=gw.metrics,
        client_address=lambda request: client_address(request, trusted),
    )


# The cyclic garbage collector's thresholds while serving (decision 019). The defaults (700, 10,
# 10) collect the young generation every 700 allocations — a few requests — and each full
# collection walks every object the process holds (policies, keys, chdb's Python side, aiohttp).
GC_THRESHOLDS = (20_000, 50, 100)


def settle_heap() -> None:
    """Once start-up is done: collect, move what survived into the collector's permanent
    generation (gc.freeze: never scanned again), and collect the young generation less often.
    Measured side by side (decision 019): ~11 % less CPU per request with the embedded store."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def resettle_heap() -> None:
    """After a policy is replaced: the old engine was frozen with the rest, and frozen cycles are
    never collected; unfreeze, collect it, freeze again (nothing to do before settle_heap)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        settle_heap()


def handle_signals(gw: Gateway) -> asyncio.Event:
    """SIGTERM and SIGINT set the returned event (stop serving); SIGHUP reloads the policy."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: spawn(
            gw.rights.reload_policy(actor="signal:SIGHUP", source="file", reason="SIGHUP"),
            name="reload",
        ),
    )
    return stop


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run both listeners until SIGTERM/SIGINT; SIGHUP reloads the policy.

    Shutdown drains in-flight requests (up to proxy.shutdown_timeout_seconds), then flushes and
    closes the spool.
    """
    proxy_app, admin_app = build(cfg)
    gw = proxy_app[GATEWAY]
    stop = handle_signals(gw)
    sites = await listeners.start(cfg, proxy_app, admin_app, gw.metrics)
    settle_heap()
    try:
        log.info(
            "pd-gateway serving",
            extra={
                "proxy": sites.proxy.name if sites.proxy else None,
                "admin": sites.admin.name,
                "policy_version": gw.policies.engine.version,
                "durability": cfg.audit.durability,
            },
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        await sites.close()
        log.info("stopped; audit spool flushed")
