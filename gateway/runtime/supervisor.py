"""The supervisor of `pd-gateway serve`: every gateway runs as a supervisor and its workers
(decisions 016, 030); one worker by default, ``--workers N`` (or the ``workers`` key) N.

Contract:
- The supervisor is the instance ``<instance_id>`` on ``<spool_dir>`` (the chain a single-process
  gateway of an earlier release had: it continues there), listening on the admin port only. It
  owns the store: one Shipper per worker spool beside its own, and the anomaly detectors (and any
  periodic job over the store). On the admin port it answers the admin APIs itself and /metrics,
  /readyz of every process, each worker's live signed head at ``/workers/w<i>/checkpoint``, and
  ``/checkpoints``: every process's, for `audit verify --gateway`.
- The proxy port: one listening socket per worker, made here (SO_REUSEPORT) and passed to the
  worker; the supervisor keeps its own copy open, so while a worker starts again its connections
  wait in the socket's queue instead of being refused.
- What the admin APIs change reaches the workers (gateway.runtime.worker): a policy put in force
  here (the admin API, the file watcher, SIGHUP) is reloaded by every worker (SIGHUP; each records
  its own permission changes, counted once as replicas' are); subject blocks and break-glass
  sessions in force here are written to ``supervisor-view.json`` beside the spool and read by every
  worker; the API answers a block or a break-glass start once that cycle has passed.
- SIGTERM: every worker drains and flushes its spool; then every shipper ships what was written
  (up to its drain bound); then the supervisor's own spool closes. A worker that exits otherwise
  is started again (its spool and chain continue) after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from gateway.audit.checkpoint import Checkpoint
from gateway.audit.segments import gateway_chains
from gateway.audit.shipping.shipper import Shipper
from gateway.audit.store.base import AuditStore
from gateway.audit.store.factory import open_store
from gateway.config.model import Config, StoreConfig
from gateway.core.fsutil import atomic_write
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn
from gateway.runtime import console, views
from gateway.runtime.app import (
    GATEWAY,
    Gateway,
    build,
    end_sessions_of_blocked,
    shipper_metrics,
)
from gateway.runtime.process import lifetime
from gateway.runtime.worker import (
    REPORT_FILE,
    VIEW_FILE,
    VIEW_POLL_SECONDS,
    seed_role_baseline,
    with_console_port,
    worker_name,
)
from gateway.web import listeners

log = logging.getLogger(__name__)

VIEW_WRITE_SECONDS = 0.1
START_TIMEOUT_SECONDS = 60.0
RESTART_BACKOFF_MAX_SECONDS = 30.0
RESTART_QUIET_SECONDS = 60.0  # a worker that ran this long is started again at once
POLICY_WAIT_SECONDS = 5.0  # the policy API waits this long at most for the workers
# A stopping worker drains for proxy.shutdown_timeout_seconds; this much more for its spool's last
# flush and exit, then it is killed (deploy/k8s: terminationGracePeriodSeconds allows for it).
WORKER_STOP_MARGIN_SECONDS = 15
SCRAPE_TIMEOUT_SECONDS = 2.0
# A serving worker whose /healthz has not answered (SCRAPE_TIMEOUT_SECONDS each) for this long is
# hung — its event loop stuck — and is killed, to be started again by _keep: the pod's liveness
# probe asks the supervisor, which a hung worker does not stop from answering.
HANG_CHECK_SECONDS = 5.0
HANG_LIMIT_SECONDS = 30.0
PROXY_BACKLOG = 1024  # as the listeners' (gateway.web.listeners)
# Admin API calls that change what the view file holds, by route (a request's id is in the path):
# blocks, break-glass, and the register's steps that block or unblock (6.5, decision 029).
_VIEW_CHANGES = frozenset(
    {
        "/admin/subject-blocks",
        "/admin/break-glass",
        "/admin/subject-requests",
        "/admin/subject-requests/{request}/close",
    }
)


@dataclass
class _Worker:
    index: int
    spool: Path
    shipper: Shipper | None = None
    metrics: Metrics = field(default_factory=lambda: Metrics(CollectorRegistry()))
    proc: asyncio.subprocess.Process | None = None
    admin_port: int | None = None
    sock: socket.socket | None = None  # its listening socket on the proxy port, kept here
    console_sock: socket.socket | None = None  # on the console's port (decision 035), kept here

    @property
    def name(self) -> str:
        return worker_name(self.index)

    @property
    def admin(self) -> str | None:
        return f"http://127.0.0.1:{self.admin_port}" if self.admin_port else None


class WorkerFailed(Exception):
    """A worker exited or did not report before it served (it printed why on stderr)."""


class Supervisor:
    def __init__(self, cfg: Config, workers: int, argv: Sequence[str]) -> None:
        self.cfg = cfg
        self.argv = list(argv)  # `serve` arguments passed on to every worker
        self.workers = [_Worker(i, cfg.audit.spool_dir / worker_name(i)) for i in range(workers)]
        self.leftover = [  # spools of workers a run with more of them left behind
            _Worker(i, p)
            for name, p in gateway_chains(cfg.audit.spool_dir)[1:]
            if (i := int(name[1:])) >= workers
        ]
        self.stopping = False
        self._open_lock = threading.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._view = b""
        self._view_lock = asyncio.Lock()
        self._worker_env: dict[str, str] = {}  # the console's address and secret (decision 025)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        # Bound now, listening once the workers may start: EADDRINUSE here if another program
        # holds the port, and a port 0 is chosen once for every worker.
        n = len(self.workers)
        sockets = listeners.shared_sockets(self.cfg.proxy_listen, n)
        console = self.cfg.console
        try:
            consoles = listeners.shared_sockets(console.listen, n) if console else []
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        for i, w in enumerate(self.workers):
            w.sock = sockets[i]
            w.console_sock = consoles[i] if consoles else None
        try:
            await self._run(sockets[0].getsockname()[1], ready)
        finally:
            for sock in sockets + consoles:
                sock.close()

    async def _run(self, proxy_port: int, ready: asyncio.Event | None) -> None:
        cfg = self.cfg
        proxy_app, admin_app = build(cfg)
        gw = proxy_app[GATEWAY]
        # Inside the error boundary (gateway.web.admin puts it first), before the admin routes.
        admin_app.middlewares.insert(1, self._merged_views(gw))
        restarts = gw.metrics.worker_restarts

        def version() -> str:
            return gw.policies.engine.version

        keepers: list[asyncio.Task[None]] = []
        try:
            async with (
                lifetime(
                    lambda: listeners.start(
                        cfg, proxy_app, admin_app, gw.metrics, serve_proxy=False
                    ),
                    lambda: self._sighup(gw),
                ) as life,
                self._shippers(),
                aiohttp.ClientSession() as self._http,
                self._console(gw),
            ):
                try:
                    # Before any worker serves: the blocks in force are in force there from its
                    # first request (6.5).
                    await self._publish_view(gw)
                    for w in self.workers:
                        seed_role_baseline(cfg.audit.spool_dir, w.spool)  # 9.2.7
                        assert w.sock is not None
                        w.sock.listen(PROXY_BACKLOG)  # connections wait until the worker serves
                        if w.console_sock is not None:
                            w.console_sock.listen(PROXY_BACKLOG)
                    started = await asyncio.gather(
                        *(self._start(w, version) for w in self.workers),
                        return_exceptions=True,
                    )
                    for result in started:
                        if isinstance(result, BaseException):
                            raise result
                    keepers = [
                        spawn(self._keep(w, version, restarts.labels(w.name).inc), name=w.name)
                        for w in self.workers
                    ]
                    keepers += [spawn(self._watch(w), name=f"{w.name}-watch") for w in self.workers]
                    keepers += [
                        spawn(self._write_view(gw), name="supervisor-view"),
                        spawn(self._follow_policy(gw), name="policy-to-workers"),
                    ]
                    life.serving(
                        ready,
                        "pd-gateway serving",
                        proxy=f"{cfg.proxy_listen.host}:{proxy_port}",
                        **self._console_address(),
                        admin=life.sites.admin.name,
                        workers=len(self.workers),
                        policy_version=gw.policies.engine.version,
                        durability=cfg.audit.durability,
                    )
                    await life.until_stopped("draining every worker")
                finally:
                    # Before the shippers stop: what the workers' final flush wrote is shipped.
                    self.stopping = True
                    for task in keepers:
                        task.cancel()
                    for w in self.workers:  # new connections: no longer queued for a restart
                        for sock in (w.sock, w.console_sock):
                            if sock is not None:
                                sock.close()
                    await asyncio.gather(*(self._stop(w) for w in self.workers))
                    log.info("workers stopped; shipping what they wrote")
            # Leaving the lifetime closed the supervisor's own listeners and spool last (its
            # shipper after it), once the workers' shippers had stopped.
        finally:
            log.info("stopped; audit spools flushed and shipped")

    # -- workers --

    async def _start(self, w: _Worker, version: Callable[[], str]) -> None:
        """Start ``w`` and wait until it serves; ``version``: the policy in force here."""
        report = w.spool / REPORT_FILE
        loaded = version()
        report.unlink(missing_ok=True)
        w.admin_port = None
        assert w.sock is not None
        fd = w.sock.fileno()
        console_fd = w.console_sock.fileno() if w.console_sock is not None else None
        console_args = ["--console-fd", str(console_fd)] if console_fd is not None else []
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            *self.argv,
            "--worker",
            str(w.index),
            "--worker-fd",
            str(fd),
            *console_args,
            "--supervisor-pid",
            str(os.getpid()),
            env={**os.environ, **self._worker_env},
            pass_fds=(fd,) if console_fd is None else (fd, console_fd),
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if w.proc.returncode is not None:
                raise WorkerFailed(f"worker {w.name} exited with {w.proc.returncode} at start-up")
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(report.read_text())
                if data["pid"] == w.proc.pid:
                    w.admin_port = int(data["admin_port"])
                    log.info("worker started", extra={"worker": w.name, "pid": w.proc.pid})
                    if version() != loaded:  # changed while it started: it may have the old one
                        w.proc.send_signal(signal.SIGHUP)
                    return
            await asyncio.sleep(0.05)
        w.proc.kill()
        raise WorkerFailed(f"worker {w.name} did not start within {START_TIMEOUT_SECONDS:g} s")

    async def _keep(
        self, w: _Worker, version: Callable[[], str], restarted: Callable[[], None]
    ) -> None:
        """Start ``w`` again whenever it exits, until shutdown: at once after a worker that ran
        a while (its connections wait in the socket held here meanwhile), with a back-off
        (0.5 s doubling to 30 s) after quick failures."""
        backoff = 0.0
        while not self.stopping:
            assert w.proc is not None
            started = time.monotonic()
            code = await w.proc.wait()
            if self.stopping:
                return
            w.admin_port = None
            log.error("worker exited; starting it again", extra={"worker": w.name, "code": code})
            restarted()
            if time.monotonic() - started > RESTART_QUIET_SECONDS:
                backoff = 0.0
            await asyncio.sleep(backoff)
            backoff = min(max(backoff * 2, 0.5), RESTART_BACKOFF_MAX_SECONDS)
            try:
                await self._start(w, version)
            except WorkerFailed as e:
                log.error("worker did not start again", extra={"worker": w.name, "error": str(e)})
            except Exception:  # e.g. no process could be made (EAGAIN): try again, backing off
                log.exception("worker could not be started again", extra={"worker": w.name})

    async def _watch(self, w: _Worker) -> None:
        """Kill ``w`` when it serves but its /healthz has not answered for HANG_LIMIT_SECONDS
        (a stuck event loop): _keep then starts it again, as after a crash."""
        silent_since: float | None = None
        silent: asyncio.subprocess.Process | None = None  # the process the silence is of
        while not self.stopping:
            await asyncio.sleep(HANG_CHECK_SECONDS)
            proc = w.proc
            if w.admin is None or proc is None or proc.returncode is not None:
                silent_since = None  # not serving (starting, or exited): _keep's business
                continue
            status, _ = await self._get(w, "/healthz")
            if status == 200 or proc is not w.proc:
                silent_since = None
                continue
            now = time.monotonic()
            if silent_since is None or silent is not proc:  # a new process starts its own count
                silent_since, silent = now, proc
            if now - silent_since >= HANG_LIMIT_SECONDS and not self.stopping:
                log.error(
                    "worker not answering; killed to be started again",
                    extra={"worker": w.name, "pid": proc.pid, "seconds": round(now - silent_since)},
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                silent_since = None

    async def _stop(self, w: _Worker) -> None:
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        grace = self.cfg.proxy.shutdown_timeout_seconds + WORKER_STOP_MARGIN_SECONDS
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.error("worker did not stop in time; killed", extra={"worker": w.name})
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _signal_workers(self, sig: int) -> None:
        """Only workers that serve: one still starting may not handle the signal yet (SIGHUP
        would end it); _start tells it of a policy change made meanwhile."""
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None and w.admin_port is not None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def _sighup(self, gw: Gateway) -> None:
        spawn(
            gw.rights.reload_policy(actor="signal:SIGHUP", source="file", reason="SIGHUP"),
            name="reload",
        )
        self._signal_workers(signal.SIGHUP)

    async def _follow_policy(self, gw: Gateway) -> None:
        """A policy put in force here (admin API, file watcher, expiry) is reloaded by every
        worker from the same files: each records its own permission changes (9.2.7)."""
        version = gw.policies.engine.version
        while True:
            await asyncio.sleep(0.1)
            if gw.policies.engine.version != version:
                version = gw.policies.engine.version
                self._signal_workers(signal.SIGHUP)

    async def _write_view(self, gw: Gateway) -> None:
        while True:
            await self._publish_view(gw)
            await asyncio.sleep(VIEW_WRITE_SECONDS)

    async def _publish_view(self, gw: Gateway) -> None:
        """Blocks and break-glass sessions in force here, for the workers (VIEW_FILE)."""
        assert gw.blocks is not None
        sessions = [{**asdict(s), "grants": sorted(s.grants)} for s in gw.break_glass.sessions()]
        data = json.dumps({"blocks": gw.blocks.as_json(), "break_glass": sessions}).encode()
        async with self._view_lock:
            if data != self._view:
                path = self.cfg.audit.spool_dir / VIEW_FILE
                await asyncio.to_thread(atomic_write, path, data, durable=False)
                self._view = data

    # -- the console (decision 025): served here, where the store is; workers forward to it --

    def _console_address(self) -> dict[str, str]:
        """The console's listener and public origin, for the serving log line (decision 035)."""
        sock = self.workers[0].console_sock
        if self.cfg.console is None or sock is None:
            return {}
        port = sock.getsockname()[1]
        return {
            "console": f"{self.cfg.console.listen.host}:{port}",
            "console_origin": with_console_port(self.cfg, port).console_origin,
        }

    @contextlib.asynccontextmanager
    async def _console(self, gw: Gateway) -> AsyncIterator[None]:
        if self.cfg.console is None:
            yield
            return
        secret = os.urandom(32)
        app = console.internal_app(
            gw,
            secret,
            health=lambda: self._health(gw),
            on_block=end_sessions_of_blocked(gw),
            after_block=lambda: self._hand_over(gw),
        )
        runner, url = await console.start_internal(app)
        self._worker_env = console.ConsoleLink(url, secret).environment()
        try:
            yield
        finally:
            await runner.cleanup()

    async def _hand_over(self, gw: Gateway) -> None:
        """A block changed here is in force in every worker before the page answers (6.5)."""
        await self._publish_view(gw)
        await asyncio.sleep(2 * VIEW_POLL_SECONDS + 0.05)

    async def _health(self, gw: Gateway) -> list[console.InstanceHealth]:
        """The supervisor and each worker, for the console's trail-health page."""
        out = [
            console.process_health(self.cfg.instance_id, "supervisor", gw.metrics, gw.checkpointer)
        ]
        for w, live in zip(self.workers, await self._worker_heads(), strict=True):
            shipped = console.process_health(
                f"{self.cfg.instance_id}-{w.name}", "worker", w.metrics, None
            )
            out.append(dataclasses.replace(shipped, live=live))
        return out

    # -- shippers (the store is this process's) --

    @contextlib.asynccontextmanager
    async def _shippers(self) -> AsyncIterator[None]:
        store = self.cfg.store
        if store is None:
            log.warning("no audit store configured: events stay in the workers' spools")
            yield
            return
        for w in self._shipped():
            w.shipper = Shipper(
                w.spool,
                self._opener(store),
                batch_max_rows=store.batch_max_rows,
                batch_max_age=store.batch_max_age_ms / 1000,
                max_backoff=store.retry_max_backoff_seconds,
                metrics=shipper_metrics(w.metrics),
            )
        started: list[Shipper] = []
        try:
            for w in self._shipped():
                assert w.shipper is not None
                await asyncio.to_thread(w.shipper.start)
                started.append(w.shipper)
            yield
        finally:
            # After the workers stopped: what their final flush wrote is shipped now.
            await asyncio.gather(*(asyncio.to_thread(s.stop) for s in started))

    def _shipped(self) -> list[_Worker]:
        """The workers, and the spools of workers a run with more of them left behind: shipped
        until they are empty (a spool without a writer ships what it holds)."""
        return [*self.workers, *self.leftover]

    def _opener(self, store: StoreConfig) -> Callable[[], AuditStore]:
        def open_locked() -> AuditStore:
            with self._open_lock:  # one chdb session opened at a time
                return open_store(store)

        return open_locked

    # -- the admin port --

    def _merged_views(self, gw: Gateway) -> Callable[..., Awaitable[web.StreamResponse]]:
        checkpoint_paths = {f"/workers/{w.name}/checkpoint": w for w in self.workers}

        @web.middleware
        async def views(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.method == "PUT" and request.path == "/admin/policy":
                response = await handler(request)
                if response.status == 200 and isinstance(response, web.Response):
                    # 9.2.7, 4.4: answered once every worker enforces what the API put in force,
                    # or, after POLICY_WAIT_SECONDS, saying which do not yet: the change is made
                    # and recorded either way, and a caller withdrawing access must know.
                    lagging = await self._policy_in_workers(gw.policies.engine.version)
                    body = json.loads(response.body) if isinstance(response.body, bytes) else {}
                    body["in_force_in_every_worker"] = not lagging
                    if lagging:
                        body["workers_not_yet_in_force"] = lagging
                    response.body = json.dumps(body).encode()
                return response
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else request.path
            if request.method == "POST" and route in _VIEW_CHANGES:
                response = await handler(request)
                if response.status == 200:
                    # 6.5: answered once the workers have read it (their poll interval; not an
                    # acknowledgement: a worker whose loop stalls longer enforces it later).
                    await self._publish_view(gw)
                    await asyncio.sleep(2 * VIEW_POLL_SECONDS + 0.05)
                return response
            if request.method != "GET":
                return await handler(request)
            if request.path == "/metrics":
                body = await self._metrics_text(gw)
                return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
            if request.path == "/readyz":
                checks = gw.readiness()
                answers = await asyncio.gather(*(self._get(w, "/readyz") for w in self.workers))
                for w, (status, _) in zip(self.workers, answers, strict=True):
                    checks[f"worker_{w.name}"] = status == 200
                ready = all(checks.values())
                return web.json_response(
                    {"status": "ready" if ready else "not_ready", "checks": checks},
                    status=200 if ready else 503,
                )
            if request.path == "/checkpoints":  # `audit verify --gateway <admin>`: every chain
                return web.json_response(await self._live_heads(gw))
            worker = checkpoint_paths.get(request.path)
            if worker is not None:  # `audit verify --gateway <admin>/workers/w<i>`
                status, body = await self._get(worker, "/checkpoint")
                return web.Response(
                    status=status if status else 503,
                    body=body,
                    headers={"Content-Type": "application/json"},
                )
            return await handler(request)

        return views

    async def _live_heads(self, gw: Gateway) -> dict[str, list[Any]]:
        """The newest signed head of every chain this gateway writes (``heads``: its own and
        each serving worker's), and the chains it has none of now (``unavailable``: a worker
        starting, hung, or with no head signed yet) — `audit verify` says those were checked
        against the store alone."""
        heads: list[Any] = []
        unavailable: list[str] = []
        own = gw.checkpointer.latest
        if own is not None:
            heads.append(own.as_dict())
        else:
            unavailable.append(self.cfg.instance_id)
        for w, live in zip(self.workers, await self._worker_heads(), strict=True):
            if live is not None:
                heads.append(live.as_dict())
            else:
                unavailable.append(f"{self.cfg.instance_id}-{w.name}")
        return {"heads": heads, "unavailable": unavailable}

    async def _worker_heads(self) -> list[Checkpoint | None]:
        """Each worker's live signed head, in order; None where it has none now (not serving,
        not answering, nothing signed yet, or an answer that is no checkpoint)."""
        answers = await asyncio.gather(*(self._get(w, "/checkpoint") for w in self.workers))
        heads: list[Checkpoint | None] = []
        for status, body in answers:
            live = None
            if status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    live = Checkpoint.from_mapping(json.loads(body))
            heads.append(live)
        return heads

    async def _policy_in_workers(self, version: str) -> list[str]:
        """Until every serving worker reports ``version`` in force (_follow_policy signals them),
        at most POLICY_WAIT_SECONDS; a worker being started again loads the files as they are.
        The names of the workers that still do not."""
        deadline = time.monotonic() + POLICY_WAIT_SECONDS
        waiting = [w for w in self.workers if w.admin is not None]
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            answers = await asyncio.gather(*(self._get(w, "/metrics") for w in waiting))
            waiting = [
                w
                for w, (status, body) in zip(waiting, answers, strict=True)
                if w.admin is not None and (status != 200 or _version_of(body) != version)
            ]
        names = [w.name for w in waiting]
        if names:
            log.error("policy not yet in force in every worker", extra={"workers": names})
        return names

    async def _get(self, w: _Worker, path: str) -> tuple[int, bytes]:
        """A worker's internal admin answer; (0, b"{}") if it is not serving."""
        if w.admin is None or self._http is None:
            return 0, b"{}"
        try:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
            async with self._http.get(w.admin + path, timeout=timeout) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError):
            return 0, b"{}"

    async def _metrics_text(self, gw: Gateway) -> bytes:
        """Every process's metrics, each sample labelled with its ``worker`` (``supervisor`` for
        this process); a worker's shipper families come from its shipper, here."""
        scraped = await asyncio.gather(*(self._get(w, "/metrics") for w in self.workers))
        return views.merged_metrics(
            gw.metrics.registry,
            {
                w.name: body
                for w, (status, body) in zip(self.workers, scraped, strict=True)
                if status == 200
            },
            {w.name: w.metrics.registry for w in self._shipped()},
        )


def _version_of(metrics: bytes) -> str | None:
    """The policy version a worker's /metrics shows; None if they cannot be read."""
    try:
        return views.policy_version(metrics)
    except ValueError:
        return None
