"""One runtime for every gateway process: the single process of `pd-gateway serve`, and the
supervisor and the workers of `serve --workers N` (decision 016).

What they share is here, once: SIGTERM and SIGINT stop serving, SIGHUP reloads the policy; the
listeners start, then the heap is settled (decision 019); the process says it serves (a log line,
and the ``ready`` event a caller in the same process may wait on); when told to stop, the listeners
close, which drains in-flight requests and then closes the spool (the proxy app's cleanup).
Readiness while serving is each process's ``Gateway.readiness`` on its admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.config.model import Config
from gateway.core.tasks import spawn
from gateway.runtime.app import GATEWAY, Gateway, build
from gateway.runtime.heap import settle_heap
from gateway.web import listeners

log = logging.getLogger(__name__)


def handle_signals(reload: Callable[[], None]) -> asyncio.Event:
    """SIGTERM and SIGINT set the returned event (stop serving); SIGHUP calls ``reload``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    return stop


def reload_policy(gw: Gateway) -> Callable[[], None]:
    """What SIGHUP does in a process that serves alone: reload the policy files (9.2.7: every
    change they make is recorded before it is in force)."""

    def reload() -> None:
        spawn(
            gw.rights.reload_policy(actor="signal:SIGHUP", source="file", reason="SIGHUP"),
            name="reload",
        )

    return reload


@dataclass
class Lifetime:
    """A process between its listeners' start and their close."""

    sites: listeners.Listeners
    stop: asyncio.Event

    def serving(self, ready: asyncio.Event | None, message: str, **extra: Any) -> None:
        log.info(message, extra=extra)
        if ready is not None:
            ready.set()

    async def until_stopped(self, draining: str) -> None:
        await self.stop.wait()
        log.info(f"shutting down: {draining}")


@contextlib.asynccontextmanager
async def lifetime(
    start: Callable[[], Awaitable[listeners.Listeners]], reload: Callable[[], None]
) -> AsyncIterator[Lifetime]:
    """Signals handled, the listeners started by ``start`` and the heap settled; on leaving, the
    listeners close (in-flight requests drain, then the spool is flushed and closed)."""
    stop = handle_signals(reload)
    sites = await start()
    settle_heap()
    try:
        yield Lifetime(sites, stop)
    finally:
        await sites.close()


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run both listeners of one process until SIGTERM/SIGINT; SIGHUP reloads the policy.

    Shutdown drains in-flight requests (up to proxy.shutdown_timeout_seconds), then flushes and
    closes the spool.
    """
    proxy_app, admin_app = build(cfg)
    gw = proxy_app[GATEWAY]
    try:
        async with lifetime(
            lambda: listeners.start(cfg, proxy_app, admin_app, gw.metrics), reload_policy(gw)
        ) as life:
            life.serving(
                ready,
                "pd-gateway serving",
                proxy=life.sites.proxy.name if life.sites.proxy else None,
                admin=life.sites.admin.name,
                policy_version=gw.policies.engine.version,
                durability=cfg.audit.durability,
            )
            await life.until_stopped("draining in-flight requests")
    finally:
        log.info("stopped; audit spool flushed")
