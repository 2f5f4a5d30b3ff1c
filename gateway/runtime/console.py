"""Where the console runs (decision 025): always in the process that owns the store and the
trail's spool, reached by staff browsers through the console's own listener (decision 035: an
origin no proxied page shares), which the workers serve.

- `serve` (always a supervisor and its workers, decision 030): the supervisor serves the console
  app on an internal listener of its own (127.0.0.1, a port chosen at start) whose only
  credential is a caller sealed by a worker with a secret of this run
  (``gateway.web.console.identity``); each worker's console listener forwards the console's path
  there after authenticating the browser itself (``ConsoleFront``). The secret and the address
  reach the workers in their environment (``ENV_URL``, ``ENV_SECRET``), never on a command line.
- The tests' harness (one process built with ``runtime.app.build``): the console app is mounted
  on the console listener's app at ``console.path``, behind the browser login; the caller is the
  session.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web

from gateway.audit.checkpoint import Checkpointer, load_public_keys
from gateway.audit.recorder import Recorder
from gateway.audit.refusals import AnonymousRefusals
from gateway.audit.store.factory import reader
from gateway.config.model import Config
from gateway.core.metrics import Metrics
from gateway.governance.access_rights import AccessRights
from gateway.governance.blocks import SubjectBlocks
from gateway.governance.requests import Register
from gateway.governance.subject_hash import SubjectHasher
from gateway.identity.tokens import Principal
from gateway.policy.engine import PolicyStore
from gateway.policy.tools import roster
from gateway.web.blocks_api import OnBlock
from gateway.web.boundary import error_middleware
from gateway.web.browser import BrowserLogin
from gateway.web.console.access import ConsoleTrail
from gateway.web.console.app import build_console
from gateway.web.console.forms import SubjectTokens
from gateway.web.console.forward import ConsoleFront
from gateway.web.console.identity import CallerSource, SessionCallers, SignedCallers
from gateway.web.console.kit import ConsoleDeps, InstanceHealth
from gateway.web.console.render import Renderer
from gateway.web.evidence_api import EvidenceMaker
from gateway.web.requests_api import Deps as RegisterDeps
from gateway.web.trail import TrailAccess

__all__ = ["ConsoleLink", "InstanceHealth", "internal_app", "mount", "process_health"]
ENV_URL = "PDGW_CONSOLE_URL"
ENV_SECRET = "PDGW_CONSOLE_SECRET"
Health = Callable[[], Awaitable[list[InstanceHealth]]]


class Parts(Protocol):
    """What the console needs of a process's Gateway (gateway.runtime.app)."""

    cfg: Config
    metrics: Metrics
    recorder: Recorder
    policies: PolicyStore
    rights: AccessRights
    hasher: SubjectHasher
    blocks: SubjectBlocks
    register: Register
    anonymous: AnonymousRefusals
    checkpointer: Checkpointer

    async def verify(self, token: str) -> Principal: ...

    def browser(self) -> BrowserLogin: ...

    def http(self) -> aiohttp.ClientSession: ...


@dataclass(frozen=True)
class ConsoleLink:
    """How a worker reaches its supervisor's console listener."""

    url: str
    secret: bytes

    def environment(self) -> dict[str, str]:
        return {ENV_URL: self.url, ENV_SECRET: self.secret.hex()}

    @classmethod
    def from_environment(cls) -> ConsoleLink | None:
        url, secret = os.environ.get(ENV_URL), os.environ.get(ENV_SECRET)
        if not url or not secret:
            return None
        return cls(url, bytes.fromhex(secret))


def _trail(gw: Parts) -> ConsoleTrail:
    access = TrailAccess(
        verify=gw.verify,
        policies=gw.policies,
        recorder=gw.recorder,
        trusted=gw.cfg.proxy.trusted_proxies,
    )
    return ConsoleTrail(access, gw.recorder)


def _form_targets(cfg: Config) -> str:
    """The OpenID provider's origin: the logout form ends at its sign-out page."""
    if cfg.oidc is None:
        return ""
    from urllib.parse import urlsplit

    parts = urlsplit(cfg.oidc.issuer)
    return f"{parts.scheme}://{parts.netloc}"


def own_health(gw: Parts, role: str = "gateway") -> Health:
    """This process as the trail-health page shows it (its metrics and live checkpoint)."""

    async def health() -> list[InstanceHealth]:
        return [process_health(gw.cfg.instance_id, role, gw.metrics, gw.checkpointer)]

    return health


def process_health(
    instance: str, role: str, metrics: Metrics, checkpointer: Checkpointer | None
) -> InstanceHealth:
    value = metrics.registry.get_sample_value
    up = value("pdgw_store_up")
    return InstanceHealth(
        instance=instance,
        role=role,
        live=checkpointer.latest if checkpointer is not None else None,
        shipper_lag_seconds=value("pdgw_shipper_lag_seconds"),
        store_up=None if up is None else up >= 1,
        spool_backlog_bytes=value("pdgw_spool_backlog_bytes"),
    )


def console_deps(
    gw: Parts,
    callers: CallerSource,
    *,
    health: Health,
    on_block: OnBlock | None,
    after_block: Callable[[], Awaitable[None]] | None = None,
) -> ConsoleDeps:
    cfg = gw.cfg
    assert cfg.console is not None
    key_file = cfg.audit.checkpoint_key_file
    return ConsoleDeps(
        cfg=cfg.console,
        instance=cfg.instance_id,
        renderer=Renderer(
            base=cfg.console.path,
            default_zone=cfg.console.timezone,
            form_targets=_form_targets(cfg),
        ),
        trail=_trail(gw),
        callers=callers,
        open_store=reader(cfg.store),
        hasher=gw.hasher,
        blocks=gw.blocks,
        rights=gw.rights,
        tokens=SubjectTokens(),
        purposes_of={r.name: r.purpose for r in cfg.routes},
        public_keys=lambda: load_public_keys([key_file]),  # the gateway's own (report, verify)
        health=health,
        roster=lambda: roster(cfg.authz.model, cfg.authz.policy),
        anomalies=cfg.anomalies,
        on_block=on_block,
        after_block=after_block,
        register=RegisterDeps(gw.recorder, gw.register, gw.blocks, gw.rights, on_block),
        evidence=EvidenceMaker(cfg, gw.policies, reader(cfg.store)),
    )


def mount(
    app: web.Application,
    gw: Parts,
    *,
    via: ConsoleLink | None,
    on_block: OnBlock | None,
) -> None:
    """The console on its listener's app (``runtime.app.console_app``): here (one process), or
    forwarded to the supervisor (a worker). Routed before the gateway's login pages."""
    cfg = gw.cfg
    assert cfg.console is not None
    callers = SessionCallers(gw.browser, trusted=cfg.proxy.trusted_proxies, anonymous=gw.anonymous)
    if via is None:
        deps = console_deps(gw, callers, health=own_health(gw), on_block=on_block)
        app.add_subapp(cfg.console.path.rstrip("/"), build_console(deps))
        return
    front = ConsoleFront(
        target=via.url, secret=via.secret, callers=callers, trail=_trail(gw), http=gw.http
    )
    app.router.add_route("*", cfg.console.path + "{tail:.*}", front.handle)


def internal_app(
    gw: Parts,
    secret: bytes,
    *,
    health: Health,
    on_block: OnBlock | None,
    after_block: Callable[[], Awaitable[None]] | None,
) -> web.Application:
    """The supervisor's console app, for its internal listener: callers sealed by its workers."""
    cfg = gw.cfg
    assert cfg.console is not None
    callers = SignedCallers(secret, anonymous=gw.anonymous)
    deps = console_deps(gw, callers, health=health, on_block=on_block, after_block=after_block)
    app = web.Application(middlewares=[error_middleware(metrics=gw.metrics, route_label="console")])
    app.add_subapp(cfg.console.path.rstrip("/"), build_console(deps))
    return app


async def start_internal(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1 at a free port; the runner (to clean up) and its URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"
