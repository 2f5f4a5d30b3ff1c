"""Composition root: builds the proxy app and the admin app from a Config, and runs them.

Start-up order (cleanup_ctx, stopped in reverse): the shipper (spool → store) first, so it is
the last to stop and ships what the final flush wrote; then the audit spool, closed only after
every in-flight request has drained; then the upstream client session, the JWKS keys and the
pipeline that uses them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import listeners, policy_tools, tls
from gateway.admin import build_admin_app
from gateway.audit.events import PermissionChange
from gateway.audit.factory import open_store
from gateway.audit.shipper import Shipper, ShipperMetrics
from gateway.audit.spool import Spool, SpoolHooks
from gateway.authz import PolicyEngine, PolicyStore, permission_changes
from gateway.break_glass import BreakGlass, Session, describe, load_allowances
from gateway.break_glass import change_id as break_glass_change_id
from gateway.config import Config, StoreConfig
from gateway.errors import AuthenticationError, PolicyError, SpoolUnavailable
from gateway.identity import KeySet, Principal, TokenVerifier, file_fetcher, url_fetcher
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, error_middleware, expect_handler
from gateway.policy_api import break_glass_handler, policy_put_handler
from gateway.proxy import Forwarder
from gateway.role_changes import RoleTracker
from gateway.routing import RouteTable
from gateway.tasks import spawn

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything the apps share; one per process."""

    cfg: Config
    metrics: Metrics
    spool: Spool
    policies: PolicyStore
    break_glass: BreakGlass = field(default_factory=lambda: BreakGlass({}))
    keys: KeySet | None = None
    verifier: TokenVerifier | None = None
    pipeline: Pipeline | None = None
    shipper: Shipper | None = None

    def readiness(self) -> dict[str, bool]:
        return {
            "policy_loaded": self.policies.engine is not None,
            "spool_writable": self.spool.writable,
            "jwks_loaded": self.keys is not None and self.keys.loaded,
        }

    async def reload_policy(self, *, actor: str, source: str, reason: str) -> bool:
        """Load the policy files again and put them in force, recording every change (9.2.7).

        A policy that fails `policy check` or does not load is refused; the old one stays."""
        problems = [str(p) for p in self.lint_policy(self.cfg.authz.policy)]
        engine = None
        try:
            engine = self.policies.candidate()
        except PolicyError as e:
            problems.append(str(e))
        if problems or engine is None:
            self.metrics.policy_reloads.labels("refused").inc()
            log.error(
                "policy reload refused; previous policy stays in force",
                extra={"problems": problems[:10], "count": len(problems)},
            )
            return False
        return await self.apply_policy(engine, actor=actor, source=source, reason=reason)

    def lint_policy(self, policy: Path) -> list[policy_tools.Problem]:
        """`pd-gateway policy check` against this gateway's routes: what must hold before a policy
        file is put in force (the admin API runs the same check)."""
        try:
            lint = policy_tools.load_lint_settings(policy.parent)
        except PolicyError as e:
            return [policy_tools.Problem(policy.parent / "lint.yaml", 0, str(e))]
        return policy_tools.check(
            self.cfg.authz.model,
            policy,
            known_resources={(r.system, r.category) for r in self.cfg.routes},
            special_categories=lint.get("special_categories"),
        )

    async def apply_policy(
        self,
        engine: PolicyEngine,
        *,
        actor: str,
        source: str,
        reason: str,
        before_install: Callable[[], None] | None = None,
    ) -> bool:
        """Put a validated policy in force. Its effective changes are written to the audit spool
        in one write *before* it decides anything; if they cannot be recorded the change is
        refused (no silent change of access rights). ``before_install`` runs between the two
        (the admin API writes the policy file there)."""
        old = self.policies.engine
        if engine.rules() == old.rules() and engine.version == old.version:
            return True
        now = time.time_ns() // 1000
        records = [
            PermissionChange(
                change_id=cid,
                ts_us=now,
                instance=self.cfg.instance_id,
                actor=actor,
                change_kind=kind,
                role=role,
                user=user,
                rule_before=before,
                rule_after=after,
                policy_version_before=old.version,
                policy_version_after=engine.version,
                reason=reason,
                source=source,
            ).record()
            for kind, role, user, before, after, cid in permission_changes(old, engine)
        ]
        if records:
            try:
                await self.spool.append(b"".join(records))
            except SpoolUnavailable as e:
                self.metrics.policy_reloads.labels("refused").inc()
                log.error(
                    "policy change refused: it cannot be recorded", extra={"reason": e.reason}
                )
                return False
        if before_install is not None:
            before_install()
        self.policies.install(engine)
        self.metrics.policy_reloads.labels("ok").inc()
        self.metrics.set_policy(engine.version, engine.rule_count)
        log.info(
            "policy changed", extra={"changes": len(records), "actor": actor, "source": source}
        )
        return True

    async def start_break_glass(
        self, principal: Principal, seconds: float, justification: str
    ) -> Session:
        """Open a break-glass session (PermissionError / ValueError if the policy forbids it);
        it is recorded before it grants anything, SpoolUnavailable if it cannot be."""
        session = self.break_glass.open(principal.user, principal.roles, seconds, justification)
        until = dt.datetime.fromtimestamp(session.ends_at, dt.UTC).isoformat(timespec="seconds")
        await self._record_break_glass(
            session,
            "started",
            f"{describe(session.grants)} until {until}",
            principal.user,
            justification,
        )
        self.break_glass.activate(session)
        self.metrics.break_glass_invocations.inc()
        log.warning("break-glass session started", extra={"session": session.session_id})
        return session

    async def _record_break_glass(
        self, session: Session, event: str, rule: str, actor: str, reason: str
    ) -> None:
        version = self.policies.engine.version
        change = PermissionChange(
            change_id=break_glass_change_id(session, event),
            ts_us=time.time_ns() // 1000,
            instance=self.cfg.instance_id,
            actor=actor,
            change_kind=f"break_glass_{event}",
            role="",
            user=session.user,
            rule_before="" if event == "started" else rule,
            rule_after=rule if event == "started" else "",
            policy_version_before=version,
            policy_version_after=version,
            reason=reason,
            source="break_glass",
        )
        await self.spool.append(change.record())

    async def end_break_glass_sessions(self, interval: float = 0.5) -> None:
        """Record the end of every session that reached it (the access ended by itself)."""
        while True:
            await asyncio.sleep(interval)
            for s in self.break_glass.expired():
                try:
                    await self._record_break_glass(
                        s, "ended", describe(s.grants), "expiry", "break-glass period ended"
                    )
                except SpoolUnavailable:
                    log.error(
                        "break-glass end could not be recorded", extra={"session": s.session_id}
                    )

    async def watch_policy_files(self, interval: float) -> None:
        """Reload when the policy files change on disk (a deploy, a git pull)."""
        stamp = self.policies.files_stamp()
        while True:
            await asyncio.sleep(interval)
            try:
                now = self.policies.files_stamp()
            except OSError:
                continue  # mid-replace: look again next time
            if now != stamp:
                stamp = now
                await self.reload_policy(
                    actor=f"file:{self.cfg.authz.policy}",
                    source="file",
                    reason="policy files changed on disk",
                )
            lapse = self.policies.engine.next_expiry
            if lapse is not None and time.time() >= lapse:
                await self.reload_policy(
                    actor="expiry", source="expiry", reason="a time-bound grant reached its end"
                )


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
    gw = Gateway(cfg=cfg, metrics=metrics, spool=spool, policies=policies)
    gw.break_glass = BreakGlass(load_allowances(cfg.authz.policy.parent))
    metrics.break_glass_active.set_function(lambda: gw.break_glass.active)

    proxy_app = web.Application(middlewares=[error_middleware(metrics=metrics)])
    proxy_app[GATEWAY] = gw
    proxy_app.cleanup_ctx.append(_shipper_ctx)
    proxy_app.cleanup_ctx.append(_spool_ctx)
    proxy_app.cleanup_ctx.append(_pipeline_ctx)
    proxy_app.router.add_route("*", "/{tail:.*}", _handle, expect_handler=expect_handler)
    admin_app = build_admin_app(metrics, gw.readiness)

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
            lint=gw.lint_policy,
            apply=gw.apply_policy,
        ),
    )
    admin_app.router.add_post(
        "/admin/break-glass", break_glass_handler(verify=verify, start=gw.start_break_glass)
    )
    admin_app[GATEWAY] = gw
    return proxy_app, admin_app


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
    spool = app[GATEWAY].spool
    await asyncio.to_thread(spool.open)
    yield
    spool.close()  # on the loop's thread: flushes its buffer, then joins the sync thread


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    cfg = gw.cfg
    # First: a baseline that cannot be read stops start-up before anything else is opened.
    roles = RoleTracker(cfg.audit.spool_dir, instance=cfg.instance_id, issuer=cfg.identity.issuer)
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
    gw.verifier = TokenVerifier(ident, keys, on_cache=gw.metrics.token_cache_result)
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
        ),
        metrics=gw.metrics,
        role_tracker=roles,
        break_glass=gw.break_glass,
    )
    reaper = spawn(gw.end_break_glass_sessions(), name="break-glass-ends")
    watcher = None
    if cfg.authz.watch_interval_seconds > 0:
        watcher = spawn(
            gw.watch_policy_files(cfg.authz.watch_interval_seconds), name="policy-watch"
        )
    yield
    if watcher is not None:
        watcher.cancel()
    reaper.cancel()
    await roles.close()  # the baseline, fsynced off the loop
    await session.close()


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run both listeners until SIGTERM/SIGINT; SIGHUP reloads the policy.

    Shutdown drains in-flight requests (up to proxy.shutdown_timeout_seconds), then flushes and
    closes the spool.
    """
    proxy_app, admin_app = build(cfg)
    gw = proxy_app[GATEWAY]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: spawn(
            gw.reload_policy(actor="signal:SIGHUP", source="file", reason="SIGHUP"), name="reload"
        ),
    )
    sites = await listeners.start(cfg, proxy_app, admin_app, gw.metrics)
    try:
        log.info(
            "pd-gateway serving",
            extra={
                "proxy": sites.proxy.name,
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
