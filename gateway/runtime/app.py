"""Composition root: builds the proxy app and the admin app of one process from a Config.

It only wires: every part is built from the config by the module that owns it, and joined here.
What exists for the whole life of the process is built at once (``Gateway``); what needs the
event loop — the HTTP client for upstreams and the JWKS, and what uses it — is built when the
proxy app starts (``Serving``), inside the loop.

Start-up order (cleanup_ctx, stopped in reverse): the shipper (spool → store) first, so it is
the last to stop and ships what the final flush wrote; then the audit spool, closed only after
every in-flight request has drained; then subject blocks; then the HTTP client, the JWKS keys and
the pipeline that uses them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.audit.checkpoint import Checkpointer, Signer, load_public_keys
from gateway.audit.recorder import Recorder
from gateway.audit.refusals import AnonymousRefusals
from gateway.audit.shipping.shipper import Shipper, ShipperMetrics
from gateway.audit.spool import Spool, SpoolHooks
from gateway.audit.store.factory import open_store, reader
from gateway.config.model import Config, StoreConfig
from gateway.core import tls
from gateway.core.errors import AuthenticationError
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn
from gateway.forwarding.forwarder import Forwarder
from gateway.forwarding.headers import client_address
from gateway.forwarding.routing import RouteTable
from gateway.governance import anomalies, requests
from gateway.governance.access_rights import AccessRights
from gateway.governance.blocks import StoreOpener, SubjectBlocks
from gateway.governance.requests import Register
from gateway.governance.subject_hash import SubjectHasher
from gateway.identity.oidc import OidcClient
from gateway.identity.sessions import RevocationList, SessionCodec
from gateway.identity.tokens import KeySet, Principal, TokenVerifier, file_fetcher, url_fetcher
from gateway.policy.break_glass import BreakGlass, load_allowances
from gateway.policy.engine import PolicyStore
from gateway.policy.role_changes import RoleTracker
from gateway.runtime import console
from gateway.runtime.heap import resettle_heap
from gateway.web.admin import build_admin_app, latest_checkpoint_handler
from gateway.web.audit_api import AuditAPI
from gateway.web.blocks_api import BlocksAPI
from gateway.web.boundary import Handler, error_boundary, error_middleware
from gateway.web.browser import BrowserLogin
from gateway.web.evidence_api import EvidenceAPI, EvidenceMaker
from gateway.web.login import PAGE_ORIGIN, LoginRefused, add_pending_cookies
from gateway.web.pipeline import Pipeline, expect_handler
from gateway.web.policy_api import (
    break_glass_handler,
    policy_put_handler,
    session_revoke_handler,
)
from gateway.web.requests_api import Deps, RequestsAPI

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """What the proxy app builds when it starts, inside the event loop (aiohttp's client session
    needs one), and closes when it stops."""

    http: aiohttp.ClientSession  # to the upstreams, the JWKS and the OpenID provider
    keys: KeySet
    verifier: TokenVerifier
    browser: BrowserLogin | None  # None: no `oidc` section, bearer tokens only
    pipeline: Pipeline


@dataclass
class Gateway:
    """Everything the apps of one process share, built from the config before the loop runs."""

    cfg: Config
    metrics: Metrics
    spool: Spool
    recorder: Recorder  # the one way records reach the spool (gateway.audit.recorder)
    policies: PolicyStore
    rights: AccessRights
    checkpointer: Checkpointer
    anonymous: AnonymousRefusals
    hasher: SubjectHasher
    blocks: SubjectBlocks
    register: Register  # data subjects' requests (6.3, 6.5, 6.6, 7.3; decision 029)
    shipper: Shipper | None  # None: no store, or another process ships this spool
    revocations: RevocationList | None  # browser sessions ended (decision 014); None: no oidc
    serving: Serving | None = None  # set while the proxy app runs

    @property
    def break_glass(self) -> BreakGlass:
        return self.rights.break_glass

    def readiness(self) -> dict[str, bool]:
        return {
            "policy_loaded": self.policies.engine is not None,
            "spool_writable": self.spool.writable,
            "jwks_loaded": self.serving is not None and self.serving.keys.loaded,
        }

    async def verify(self, token: str) -> Principal:
        """A bearer token of the admin APIs; refused until the keys are loaded."""
        if self.serving is None:
            raise AuthenticationError("not_ready")
        return await self.serving.verifier.verify(token)

    def browser(self) -> BrowserLogin:
        """The browser login (an `oidc` section), once serving."""
        assert self.serving is not None and self.serving.browser is not None, "oidc, serving"
        return self.serving.browser

    def http(self) -> aiohttp.ClientSession:
        assert self.serving is not None, "built before the site starts"
        return self.serving.http


GATEWAY = web.AppKey("gateway", Gateway)


def spool_hooks(metrics: Metrics) -> SpoolHooks:
    return SpoolHooks(
        fsync_seconds=metrics.spool_fsync.observe,
        pending=metrics.spool_pending.set,
        written=lambda records, nbytes: metrics.spool_bytes_written.inc(nbytes),
        error=lambda reason: metrics.spool_errors.labels(reason).inc(),
        healthy=lambda ok: metrics.spool_healthy.set(1 if ok else 0),
    )


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


def build_shipper(store: StoreConfig, spool: Spool, metrics: Metrics) -> Shipper:
    return Shipper(
        spool.directory,
        lambda: open_store(store),
        batch_max_rows=store.batch_max_rows,
        batch_max_age=store.batch_max_age_ms / 1000,
        max_backoff=store.retry_max_backoff_seconds,
        metrics=shipper_metrics(metrics),
        on_progress=spool.shipper_progress,
    )


def build(
    cfg: Config,
    registry: CollectorRegistry | None = None,
    *,
    ship: bool = True,
    blocks_from: StoreOpener | None = None,
) -> tuple[web.Application, web.Application]:
    """The proxy app and the admin app. Loads the policy now (PolicyError if it is invalid) and
    the IdP role baseline (RoleBaselineError if it cannot be read: nothing is opened then).

    ``ship=False``: no shipper in this process; another one ships its spool. ``blocks_from``:
    where subject blocks are read, if not from the configured store. (A worker's spool is shipped
    by its supervisor, and its blocks are the supervisor's: gateway.runtime.worker.)
    The console has an app of its own, on a listener of its own (``console_app``, decision
    035); the proxy app only sends a browser that asks it for the console there."""
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
    recorder = Recorder(spool)
    policies = PolicyStore(
        cfg.authz.model,
        cfg.authz.policy,
        cache_size=cfg.authz.decision_cache_size,
        on_cache=metrics.decision_cache_result,
    )
    rights = AccessRights(
        cfg,
        metrics,
        recorder,
        policies,
        break_glass=BreakGlass(load_allowances(cfg.authz.policy.parent)),
        roles=RoleTracker(a.spool_dir),  # 9.2.7: role sets seen in tokens
        on_installed=resettle_heap,
    )
    gw = Gateway(
        cfg,
        metrics,
        spool,
        recorder,
        policies,
        rights,
        checkpointer=Checkpointer(
            spool,
            Signer.load(a.checkpoint_key_file),
            a.checkpoint_interval_seconds,
            on_checkpoint=metrics.set_checkpoint,
        ),
        anonymous=AnonymousRefusals(
            recorder.note,
            window_seconds=a.anonymous_window_seconds,
            max_keys=a.anonymous_max_keys,
        ),
        hasher=SubjectHasher.from_files(a.subject_key_file, a.subject_previous_key_files),
        blocks=SubjectBlocks(  # 6.5, 6.6
            recorder,
            a.spool_dir,
            blocks_from or reader(cfg.store),
            poll_seconds=a.blocks_poll_seconds,
            on_count=metrics.blocked_subjects.set,
        ),
        register=Register(cfg.subject_requests, a.spool_dir, reader(cfg.store)),
        shipper=build_shipper(cfg.store, spool, metrics) if ship and cfg.store else None,
        revocations=RevocationList.shared(
            cfg.oidc.session.revocation_file,
            session_key_file=cfg.oidc.session.key_file,
            poll=cfg.oidc.session.revocation_poll_seconds,
            actor=f"gateway:{cfg.instance_id}",
        )
        if cfg.oidc is not None
        else None,
    )
    _export_gauges(gw)
    return _proxy_app(gw, ship), _admin_app(gw)


def _export_gauges(gw: Gateway) -> None:
    m, spool = gw.metrics, gw.spool
    m.set_policy(gw.policies.engine.version, gw.policies.engine.rule_count)
    m.spool_bytes.set_function(lambda: spool.size_bytes)
    m.spool_backlog.set_function(lambda: spool.backlog_bytes)
    m.spool_over_limit.set_function(lambda: 1 if spool.over_limit else 0)
    m.spool_unsynced_age.set_function(lambda: spool.unsynced_age_seconds)
    m.blocks_view_age.set_function(lambda: gw.blocks.view_age_seconds)
    m.break_glass_active.set_function(lambda: gw.break_glass.active)
    m.chain_seq.set_function(lambda: spool.head.seq)
    m.ready.set_function(lambda: 1 if all(gw.readiness().values()) else 0)


def _proxy_app(gw: Gateway, ship: bool) -> web.Application:
    cfg = gw.cfg
    app = web.Application()  # no middleware: each route is inside the error boundary

    def bounded(handler: Handler) -> Handler:
        return error_boundary(handler, metrics=gw.metrics)

    app[GATEWAY] = gw
    if ship:
        app.cleanup_ctx.append(_shipper_ctx)
    if cfg.anomalies is not None and cfg.store is not None:  # 9.1.6, 9.1.9, 10.2
        app.cleanup_ctx.append(
            anomalies.background(cfg.anomalies, cfg.store, cfg.instance_id, gw.metrics)
        )
    if ship:  # the register and its deadlines' gauges where the store is owned (decision 029)
        app.cleanup_ctx.append(requests.background(gw.register, gw.metrics))
    app.cleanup_ctx.append(_spool_ctx)
    app.cleanup_ctx.append(_blocks_ctx)
    app.cleanup_ctx.append(_serving_ctx)
    if cfg.console is not None:  # never served here: same-origin with every proxied page (035)
        app.router.add_route("*", cfg.console.path + "{tail:.*}", bounded(_to_console))
    if cfg.oidc is not None:
        app.router.add_route("*", r"/_pdgw/{tail:[\s\S]*}", bounded(_browser_pages))
        app.on_response_prepare.append(add_pending_cookies)
    every = _EveryTarget(r"/{tail}")
    app.router.register_resource(every)
    every.add_route("*", bounded(_handle), expect_handler=expect_handler)
    return app


class _EveryTarget(web.DynamicResource):
    """The proxy app's last route: every request target with a path reaches the pipeline, which
    refuses what it cannot route and records that — a path with a decoded newline (`%0a`), and
    `*` (OPTIONS), which no path pattern matches. A target with no path at all (`CONNECT
    host:port`, an absolute-form `http://host` without one) is never offered to a resource:
    aiohttp's router answers it 404 itself, unrecorded, nothing forwarded (decision 037)."""

    def _match(self, path: str) -> dict[str, str] | None:
        return {}


def _admin_app(gw: Gateway) -> web.Application:
    cfg, rights = gw.cfg, gw.rights
    app = build_admin_app(
        gw.metrics,
        gw.readiness,
        recorder=gw.recorder,
        anonymous=gw.anonymous,
        policy_version=lambda: gw.policies.engine.version,
        trusted=cfg.proxy.trusted_proxies,
    )
    app.router.add_put(
        "/admin/policy",
        policy_put_handler(
            verify=gw.verify,
            admin_roles=cfg.authz.policy_admin_roles,
            model=cfg.authz.model,
            policy=cfg.authz.policy,
            lint=rights.lint_policy,
            apply=rights.apply_policy,
        ),
    )
    app.router.add_post(
        "/admin/break-glass", break_glass_handler(verify=gw.verify, start=rights.start_break_glass)
    )
    app.router.add_post(  # decision 014, 9.2.7
        "/admin/sessions/revoke",
        session_revoke_handler(
            verify=gw.verify,
            admin_roles=cfg.authz.policy_admin_roles,
            revocations=gw.revocations,
            poll_seconds=cfg.oidc.session.revocation_poll_seconds if cfg.oidc else 0.0,
            rights=rights,
            recorder=gw.recorder,
        ),
    )
    app.router.add_get("/checkpoint", latest_checkpoint_handler(lambda: gw.checkpointer.latest))
    AuditAPI(  # 9.2.6: the trail read through this process's store, every query recorded
        verify=gw.verify,
        policies=gw.policies,
        recorder=gw.recorder,
        open_store=reader(cfg.store),
        trusted=cfg.proxy.trusted_proxies,
        hasher=gw.hasher,
        purposes_of={r.name: r.purpose for r in cfg.routes},
        public_keys=lambda: load_public_keys([cfg.audit.checkpoint_key_file]),  # its own
        register=gw.register,
    ).register(app)
    BlocksAPI(  # 6.5, 6.6
        verify=gw.verify,
        policies=gw.policies,
        recorder=gw.recorder,
        trusted=cfg.proxy.trusted_proxies,
        blocks=gw.blocks,
        rights=rights,
        hasher=gw.hasher,
        on_block=end_sessions_of_blocked(gw),
    ).register(app)
    RequestsAPI(  # 6.3, 6.5, 6.6, 7.3
        verify=gw.verify,
        policies=gw.policies,
        recorder=gw.recorder,
        trusted=cfg.proxy.trusted_proxies,
        deps=register_deps(gw),
        hasher=gw.hasher,
    ).register(app)
    EvidenceAPI(  # 9.1.9
        verify=gw.verify,
        policies=gw.policies,
        recorder=gw.recorder,
        trusted=cfg.proxy.trusted_proxies,
        maker=EvidenceMaker(cfg, gw.policies, reader(cfg.store)),
    ).register(app)
    app[GATEWAY] = gw
    return app


def console_app(gw: Gateway, via: console.ConsoleLink | None) -> web.Application:
    """The console's listener's app (decision 035): the console at ``console.path``, here (one
    process: the tests' harness) or forwarded to the supervisor (``via``: a worker), and the
    browser login's pages, so its logout form and its links to log in are same-origin. Nothing
    else: no upstream is reached from this origin. Its app is the proxy app's companion: the
    proxy app's start-up builds what both use (the browser login, the forwarding session)."""
    cfg = gw.cfg
    assert cfg.console is not None and cfg.oidc is not None
    app = web.Application(
        middlewares=[
            error_middleware(metrics=gw.metrics, route_label="console"),
            _addressed_to(urlsplit(cfg.console_origin).netloc.lower()),
        ]
    )
    app[GATEWAY] = gw
    app[PAGE_ORIGIN] = cfg.console_origin
    console.mount(app, gw, via=via, on_block=end_sessions_of_blocked(gw))
    app.router.add_route("*", r"/_pdgw/{tail:[\s\S]*}", _browser_pages)
    app.router.add_get("/", _console_home)
    app.on_response_prepare.append(add_pending_cookies)
    return app


def _addressed_to(authority: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The console answers only when the browser addressed it at its own origin (`Host`): a load
    balancer that routed the proxied apps' origin here — a path rule for /_pdgw/console/ on
    their host — would put it back in their origin (decision 035). 421, before anything else."""

    @web.middleware
    async def addressed(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get("Host", "").lower() != authority:
            raise LoginRefused(
                421, "misdirected", "the console answers at its own address only", "wrong_host"
            )
        return await handler(request)

    return addressed


async def _console_home(request: web.Request) -> web.StreamResponse:
    cfg = request.app[GATEWAY].cfg
    assert cfg.console is not None
    raise web.HTTPFound(cfg.console.path)


async def _to_console(request: web.Request) -> web.StreamResponse:
    """The console's path on the proxy listener: a browser navigating there (a bookmark, the
    return from a login) is sent to the console's own origin, to the same page; nothing else is
    answered here (decision 035)."""
    cfg = request.app[GATEWAY].cfg
    if request.method not in ("GET", "HEAD"):
        raise LoginRefused(404, "not_found", "the console is served at its own address", "no_route")
    raise web.HTTPFound(
        cfg.console_origin + request.rel_url.raw_path_qs, headers={"Cache-Control": "no-store"}
    )


def register_deps(gw: Gateway) -> Deps:
    """What a step of the register needs (the admin API's and the console's alike)."""
    return Deps(gw.recorder, gw.register, gw.blocks, gw.rights, end_sessions_of_blocked(gw))


def end_sessions_of_blocked(gw: Gateway) -> Callable[[str], Awaitable[None]]:
    """A block on a data subject who is also a user (their id is the token's `sub`) ends every
    browser session of theirs, on every replica within the revocation bound (decision 014, 6.5).
    The revocation list holds the id as a keyed hash only; the why is in the trail."""

    async def end(subject: str) -> None:
        if gw.revocations is not None:
            await gw.revocations.revoke(subject, "subject_blocked")

    return end


def _serving(request: web.Request) -> Serving:
    serving = request.app[GATEWAY].serving
    assert serving is not None, "built before the site starts"
    return serving


async def _browser_pages(request: web.Request) -> web.StreamResponse:
    """The gateway's own login pages (gateway.web.browser), routed before the upstreams."""
    browser = _serving(request).browser
    assert browser is not None, "routed only with an oidc section"
    return await browser.route(request)


async def _handle(request: web.Request) -> web.StreamResponse:
    return await _serving(request).pipeline.handle(request)


async def _shipper_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    shipper = gw.shipper
    if shipper is None:
        log.warning("no audit store configured: events stay in the spool (audit.spool_dir)")
        yield
        return
    await asyncio.to_thread(shipper.start)
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
    await blocks.start()
    task = spawn(blocks.run(), name="subject-blocks")
    yield
    task.cancel()


async def _serving_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    cfg = gw.cfg
    connector = aiohttp.TCPConnector(limit=cfg.proxy.max_connections, enable_cleanup_closed=True)
    http = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )
    keys = await _keys(cfg, http)
    gw.metrics.jwks_refreshes.set_function(lambda: keys.refreshes)
    verifier = TokenVerifier(cfg.identity, keys, on_cache=gw.metrics.token_cache_result)
    browser = await _browser_login(gw, http) if cfg.oidc is not None else None
    pipeline = _pipeline(gw, http, verifier, browser)
    gw.serving = Serving(http, keys, verifier, browser, pipeline)
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
    await gw.rights.roles.close()  # the IdP role baseline, fsynced off the loop
    await pipeline.close()
    await http.close()


async def _keys(cfg: Config, http: aiohttp.ClientSession) -> KeySet:
    """The JWKS, loaded now if it can be (not ready until it is)."""
    ident = cfg.identity
    fetch = (
        url_fetcher(
            http,
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
    return keys


def _pipeline(
    gw: Gateway,
    http: aiohttp.ClientSession,
    verifier: TokenVerifier,
    browser: BrowserLogin | None,
) -> Pipeline:
    cfg = gw.cfg
    px = cfg.proxy
    return Pipeline(
        cfg,
        routes=RouteTable(cfg.routes),
        verifier=verifier,
        policies=gw.policies,
        recorder=gw.recorder,
        forwarder=Forwarder(
            http,
            trusted=px.trusted_proxies,
            forward_authorization=px.forward_authorization,
            connect_timeout=px.connect_timeout_seconds,
            read_timeout=px.read_timeout_seconds,
            max_body_bytes=px.max_body_bytes,
            body_timeout=px.client_body_timeout_seconds,
            max_response_bytes=px.upstream_max_response_bytes,
            total_timeout=px.upstream_timeout_seconds,
            ssl_contexts={
                name: tls.client_context(t.ca_file, t.client_cert_file, t.client_key_file)
                for name, t in cfg.upstream_tls.items()
            },
            gateway_cookies=browser.cookie_names if browser is not None else frozenset(),
            upstream_urls=tuple(cfg.upstreams.values()),
        ),
        metrics=gw.metrics,
        access_rights=gw.rights,
        break_glass=gw.break_glass,
        anonymous=gw.anonymous,
        browser=browser,
        blocks=gw.blocks,
        hasher=gw.hasher,
    )


async def _browser_login(gw: Gateway, http: aiohttp.ClientSession) -> BrowserLogin:
    """OIDC login and sessions (decision 014): discovery now if the provider answers, else at
    the first login."""
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
    assert gw.revocations is not None  # built with the oidc section
    return BrowserLogin(
        oidc,
        client,
        codec,
        gw.revocations,
        record=gw.recorder.note,
        metrics=gw.metrics,
        client_address=lambda request: client_address(request, trusted),
        pages=(cfg.console.path,) if cfg.console is not None else (),
    )
