"""A worker of `pd-gateway serve` (decisions 016, 030): a gateway instance that only serves.

Every request is answered by a worker; `serve` runs one (``w0``) by default, ``--workers N``
(or the ``workers`` key) N of them. Worker ``i`` is the instance ``<instance_id>-w<i>`` with its
spool and chain in ``<spool_dir>/w<i>``; it accepts on a listening socket its supervisor made and
keeps open across the worker's restarts (one per worker, all on the proxy port with SO_REUSEPORT:
the kernel spreads connections) and listens on a loopback admin port of its own for its
supervisor (gateway.runtime.supervisor). It runs no shipper, no anomaly detection and opens no
store, nor loads a store's library (chdb, pyarrow, clickhouse-driver): the data path does only
the data path. Subject blocks and break-glass sessions in force come from the supervisor's view
file; the backlog of its spool follows the shipper's state file on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit.segments import list_segments
from gateway.audit.shipping.state import StateFile
from gateway.audit.spool import Spool
from gateway.audit.store.base import Row, StoreError
from gateway.audit.store.schema import Table
from gateway.config.model import LOOPBACK, Config, Listen
from gateway.core.fsutil import atomic_write
from gateway.core.tasks import spawn
from gateway.policy.break_glass import Session
from gateway.policy.role_changes import STATE_FILE as ROLES_FILE
from gateway.runtime.app import GATEWAY, Gateway, build, console_app
from gateway.runtime.console import ConsoleLink
from gateway.runtime.process import lifetime, reload_policy
from gateway.web import listeners

log = logging.getLogger(__name__)

REPORT_FILE = "worker.json"  # in a worker's spool: its pid and internal admin port, once serving
VIEW_FILE = "supervisor-view.json"  # beside the supervisor's spool: blocks and break-glass
VIEW_POLL_SECONDS = 0.25
PROGRESS_POLL_SECONDS = 1.0


def worker_name(index: int) -> str:
    return f"w{index}"


def with_console_port(cfg: Config, port: int) -> Config:
    """``cfg`` with the console's listener on ``port``, the one bound (a port 0 chosen at start):
    its origin follows (decision 035)."""
    if cfg.console is None:
        return cfg
    return replace(cfg, console=replace(cfg.console, listen=replace(cfg.console.listen, port=port)))


def worker_config(
    cfg: Config, index: int, proxy_port: int, console_port: int | None = None
) -> Config:
    """The config of worker ``index``: its own instance id, spool and internal admin port, and
    the ports its supervisor bound."""
    name = worker_name(index)
    if console_port is not None:
        cfg = with_console_port(cfg, console_port)
    return replace(
        cfg,
        instance_id=f"{cfg.instance_id}-{name}",
        proxy_listen=replace(cfg.proxy_listen, port=proxy_port),
        admin_listen=Listen("127.0.0.1", 0, None, LOOPBACK),
        audit=replace(
            cfg.audit,
            spool_dir=cfg.audit.spool_dir / name,
            blocks_poll_seconds=min(cfg.audit.blocks_poll_seconds, VIEW_POLL_SECONDS),
        ),
        store=None,  # the supervisor owns it (chdb: one process per directory)
        anomalies=None,  # run once, by the supervisor
    )


async def serve_worker(
    cfg: Config, index: int, listen_fd: int, supervisor_pid: int, console_fd: int | None = None
) -> None:
    """Run worker ``index`` (``cfg`` is the supervisor's) until SIGTERM; SIGHUP reloads.
    ``listen_fd``, ``console_fd``: the proxy port's and the console's port's listening sockets
    its supervisor passed on."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler below reloads
    _exit_with_parent(supervisor_pid)
    _label_logs(worker_name(index))
    sock = socket.socket(fileno=listen_fd)
    console_sock = socket.socket(fileno=console_fd) if console_fd is not None else None
    wcfg = worker_config(
        cfg,
        index,
        sock.getsockname()[1],
        console_sock.getsockname()[1] if console_sock is not None else None,
    )
    view = cfg.audit.spool_dir / VIEW_FILE
    proxy_app, admin_app = build(
        wcfg, ship=False, blocks_from=lambda: contextlib.closing(BlocksView(view))
    )
    gw = proxy_app[GATEWAY]
    # The console is the supervisor's (it owns the store): forwarded there (decision 025), from
    # a listener of its own (decision 035).
    via = ConsoleLink.from_environment()
    console = (
        console_app(gw, via)
        if wcfg.console is not None and console_sock is not None and via is not None
        else None
    )
    admin_app.middlewares.insert(1, _internal_only)  # inside the error boundary
    async with lifetime(
        lambda: listeners.start(
            wcfg,
            proxy_app,
            admin_app,
            gw.metrics,
            proxy_socket=sock,
            console_app=console,
            console_socket=console_sock,
        ),
        reload_policy(gw),
    ) as life:
        tasks = [
            spawn(_follow_shipper(gw.spool), name="shipper-progress"),
            spawn(_follow_break_glass(gw, view), name="break-glass-view"),
        ]
        try:
            report = {"pid": os.getpid(), "admin_port": life.sites.admin.port}
            await asyncio.to_thread(
                atomic_write, wcfg.audit.spool_dir / REPORT_FILE, json.dumps(report).encode()
            )
            life.serving(None, "worker serving", **report)
            await life.until_stopped("draining in-flight requests")
        finally:
            for task in tasks:
                task.cancel()


_INTERNAL = frozenset({"/metrics", "/healthz", "/readyz", "/checkpoint"})


@web.middleware
async def _internal_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A worker's admin port is for its supervisor: the admin APIs are the supervisor's only, so
    nothing is changed in one worker alone."""
    if request.method != "GET" or request.path not in _INTERNAL:
        raise web.HTTPNotFound()
    return await handler(request)


def _label_logs(name: str) -> None:
    """Every log line of this worker names it (the workers share the supervisor's stderr)."""

    def label(record: logging.LogRecord) -> bool:
        record.worker = name
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(label)


def _exit_with_parent(supervisor_pid: int) -> None:
    """SIGTERM this worker when the supervisor dies, so no worker outlives it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor_pid:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def seed_role_baseline(root: Path, spool: Path) -> None:
    """A worker without an IdP role baseline of its own starts from the supervisor's directory's
    (9.2.7): the one a single-process gateway of an earlier release kept there, so a role change
    made since its last run is still seen as a change, not as a first sight (decision 030)."""
    mine, theirs = spool / ROLES_FILE, root / ROLES_FILE
    if mine.exists() or not theirs.exists():
        return
    spool.mkdir(parents=True, exist_ok=True)
    atomic_write(mine, theirs.read_bytes())


def disk_progress(directory: Path) -> tuple[int, int]:
    """Bytes of spool segments on disk, and of those the bytes its shipper has consumed (before
    its saved read position): what the shipper would report in-process."""
    on_disk = consumed = 0
    state_file = StateFile(directory)  # the shipper's, read from here (decision 017's slots)
    try:
        seg, off = state_file.load(directory).read_from
    finally:
        state_file.close()
    for p in list_segments(directory):
        with contextlib.suppress(FileNotFoundError):  # deleted by the shipper meanwhile
            size = p.stat().st_size
            on_disk += size
            n = int(p.stem)
            consumed += size if n < seg else min(off, size) if n == seg else 0
    return on_disk, consumed


async def _follow_shipper(spool: Spool) -> None:
    """The shipper is in the supervisor: learn its progress from the disk, so the spool's backlog
    (audit.max_spool_bytes) counts only what is not yet in the store."""
    while True:
        await asyncio.sleep(PROGRESS_POLL_SECONDS)
        try:
            on_disk, consumed = await asyncio.to_thread(disk_progress, spool.directory)
        except (OSError, ValueError, KeyError):
            continue  # a state file mid-replace: look again next time
        # A difference either way is corrected: the disk is the truth.
        spool.shipper_progress(spool.size_bytes - on_disk, consumed)


def _read_view(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data


async def _follow_break_glass(gw: Gateway, view: Path) -> None:
    """Put in force here every break-glass session the supervisor started. The supervisor
    recorded its start; its end is recorded by every process that held it (one change id)."""
    seen: set[str] = set()
    while True:
        await asyncio.sleep(VIEW_POLL_SECONDS)
        try:
            data = await asyncio.to_thread(_read_view, view)
        except (OSError, ValueError):
            continue
        now = time.time()
        for s in data.get("break_glass", []):
            if s["session_id"] in seen or s["ends_at"] <= now:
                continue
            seen.add(s["session_id"])
            grants = frozenset(tuple(g) for g in s["grants"])
            gw.break_glass.activate(Session(**{**s, "grants": grants}))
            log.warning("break-glass session started", extra={"session": s["session_id"]})


class BlocksView:
    """A read-only stand-in for the store with one table, ``subject_blocks``: the blocks in force
    in the supervisor (its store's and its own), from its view file. Workers open no store."""

    engine = "supervisor-view"
    modern = True
    database = "supervisor"

    def __init__(self, path: Path) -> None:
        self._path = path

    def select(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Row]:
        if "subject_blocks" not in sql:
            raise StoreError("the supervisor's view holds subject blocks only")
        try:  # missing or unreadable: the last view is kept (a block is never lifted by it)
            rows: list[Row] = json.loads(self._path.read_text())["blocks"]
        except (OSError, ValueError, KeyError) as e:
            raise StoreError(f"supervisor view: {type(e).__name__}") from e
        return rows

    def server_version(self) -> str:
        return "0"

    def execute(self, sql: str) -> None:
        raise StoreError("read-only")

    def insert(self, table: Table, rows: Sequence[Row], batch_id: str) -> None:
        raise StoreError("read-only")

    def batch_rows(self, table: Table, batch_id: str) -> int:
        raise StoreError("read-only")

    def insert_running(self, batch_id: str) -> bool:
        return False

    def close(self) -> None:
        pass
