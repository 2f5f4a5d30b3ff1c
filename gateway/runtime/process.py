"""One runtime for every gateway process: the supervisor and the workers of `pd-gateway serve`
(decisions 016, 030).

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

from gateway.core.tasks import spawn
from gateway.runtime.app import Gateway
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
    """What SIGHUP does in a worker: reload the policy files (9.2.7: every change they make is
    recorded before it is in force). The supervisor does the same and passes the signal on."""

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
