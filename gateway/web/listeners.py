"""The listeners — the proxy's, the admin's and the console's own (decision 035): TLS, who may
connect, how many, and how slowly (THREAT_MODEL.md, decisions 009 and 010).

aiohttp parses the requests. What a gateway facing untrusted clients needs on top is added where a
connection is accepted, before a byte of it is parsed: an allowlist of peer networks (the admin
listener: loopback by default), a total connection limit and a per-address one (peers in
`proxy.trusted_proxies` are exempt from the latter: a load balancer carries many clients).
A refused connection gets a one-line HTTP answer with a request id and is closed.

Slow clients: the time a client may take to deliver a request head is aiohttp's
`keepalive_timeout`, which aiohttp arms when a connection opens and again after each response and
which closes a connection still waiting for a complete head (slowloris); it never cuts a request
being handled. Header sizes are aiohttp's parser limits. Slow request bodies and slow or large
upstream responses are bounded by the forwarder (proxy.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from gateway.config.model import Config, IPNetwork, Listen
from gateway.core import tls
from gateway.core.ids import new_id
from gateway.core.metrics import Metrics

log = logging.getLogger(__name__)

# After answering a request whose body was not read to its end (413, 408), aiohttp keeps reading
# and discarding it for this long so the client can see the answer, then closes. aiohttp's 10 s
# would let every refused slow client hold its connection that long.
LINGERING_SECONDS = 2.0
# The admin port serves probes, a scraper and a few operators; more at once is not a workload.
ADMIN_MAX_CONNECTIONS = 256


class ConnectionGate:
    """Admits or refuses connections by peer address; counts the open ones."""

    def __init__(
        self,
        *,
        allow: Sequence[IPNetwork] = (),
        max_total: int | None = None,
        max_per_address: int | None = None,
        exempt: Sequence[IPNetwork] = (),
    ) -> None:
        self._allow = tuple(allow)
        self._max_total = max_total
        self._max_per_address = max_per_address
        self._exempt = tuple(exempt)
        self.open = 0
        self._per_address: Counter[str] = Counter()

    def admit(self, address: str) -> str | None:
        """None if the connection may proceed (and is now counted), else the refusal reason."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if self._allow and (ip is None or not any(ip in net for net in self._allow)):
            return "peer_not_allowed"
        if self._max_total is not None and self.open >= self._max_total:
            return "too_many_connections"
        exempt = ip is not None and any(ip in net for net in self._exempt)
        if (
            self._max_per_address is not None
            and not exempt
            and self._per_address[address] >= self._max_per_address
        ):
            return "too_many_connections_from_address"
        self.open += 1
        self._per_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]


_REFUSALS = {
    "peer_not_allowed": (403, "Forbidden", "this address may not connect here"),
    "too_many_connections": (503, "Service Unavailable", "too many connections"),
    "too_many_connections_from_address": (
        503,
        "Service Unavailable",
        "too many connections from your address",
    ),
}


def refusal(reason: str) -> bytes:
    """The whole HTTP/1.1 answer sent on a refused connection before it is closed."""
    status, phrase, message = _REFUSALS[reason]
    request_id = new_id()
    body = json.dumps({"error": reason, "message": message, "request_id": request_id}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n\r\n"
    )
    return head.encode() + body


class _GatedProtocol(asyncio.Protocol):
    """Passes every event to aiohttp's protocol once the gate admitted the connection."""

    __slots__ = ("_address", "_gate", "_inner", "_on_refused")

    def __init__(
        self, inner: asyncio.Protocol, gate: ConnectionGate, on_refused: Callable[[str], None]
    ) -> None:
        self._inner: asyncio.Protocol | None = inner
        self._gate = gate
        self._on_refused = on_refused
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        reason = self._gate.admit(address)
        if reason is not None:
            self._inner = None
            self._on_refused(reason)
            # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
            cast(asyncio.Transport, transport).write(refusal(reason))
            transport.close()
            return
        self._address = address
        assert self._inner is not None
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._gate.release(self._address)
            self._inner.connection_lost(exc)
            self._inner = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GatedSite(web.BaseSite):
    """A TCP site (optionally TLS) whose connections pass a ConnectionGate first."""

    def __init__(
        self,
        runner: web.BaseRunner,
        listen: Listen,
        gate: ConnectionGate,
        on_refused: Callable[[str], None],
        *,
        handshake_timeout: float = 15.0,
        sock: socket.socket | None = None,
    ) -> None:
        ssl_context = (
            tls.server_context(listen.tls.cert_file, listen.tls.key_file, listen.tls.client_ca_file)
            if listen.tls is not None
            else None
        )
        super().__init__(runner, ssl_context=ssl_context, backlog=1024)
        self._listen = listen
        self.gate = gate
        self._on_refused = on_refused
        self._handshake_timeout = handshake_timeout
        self._sock = sock
        self.port = listen.port

    @property
    def name(self) -> str:
        scheme = "https" if self._listen.tls else "http"
        return f"{scheme}://{self._listen.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # A worker (gateway.runtime.worker) is given its listening socket by the supervisor,
        # which keeps it open while the worker restarts: connections wait, none is refused.
        where: dict[str, Any] = (
            {"sock": self._sock}
            if self._sock is not None
            else {"host": self._listen.host, "port": self._listen.port, "reuse_address": True}
        )
        self._server = await loop.create_server(
            lambda: _GatedProtocol(server(), self.gate, self._on_refused),
            ssl=self._ssl_context,
            # A TLS handshake happens before the gate sees the connection: bound its time too.
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
            backlog=self._backlog,
            **where,
        )
        if self._server.sockets:
            self.port = self._server.sockets[0].getsockname()[1]


@dataclass
class Listeners:
    proxy: GatedSite | None  # None: an admin-only instance (the supervisor of workers)
    admin: GatedSite
    runners: tuple[web.AppRunner, ...]  # closed in this order: the console's first
    console: GatedSite | None = None  # the console's own listener (decision 035)

    async def close(self) -> None:
        """Stop accepting, drain in-flight requests (the runner's shutdown_timeout), clean up."""
        for runner in self.runners:
            await runner.cleanup()


async def start(
    cfg: Config,
    proxy_app: web.Application,
    admin_app: web.Application,
    metrics: Metrics,
    *,
    serve_proxy: bool = True,
    proxy_socket: socket.socket | None = None,
    console_app: web.Application | None = None,
    console_socket: socket.socket | None = None,
) -> Listeners:
    """The apps set up (their cleanup_ctx entered) and listening. ``serve_proxy=False``: the
    proxy app is set up but not bound (a supervisor's admin-only instance); ``proxy_socket``: the
    proxy listener accepts on this socket, already bound to the proxy port (a worker's, from its
    supervisor: gateway.runtime.supervisor). ``console_app``: served on the console's listener
    (``console.listen``; ``console_socket``: a worker's, as for the proxy port), with the proxy
    listener's client limits: it is a listener browsers reach."""
    px = cfg.proxy

    def runner(app: web.Application) -> web.AppRunner:
        return web.AppRunner(
            app,
            shutdown_timeout=px.shutdown_timeout_seconds,
            access_log=None,
            keepalive_timeout=px.client_header_timeout_seconds,
            max_line_size=px.client_max_header_bytes,
            max_field_size=px.client_max_header_bytes,
            max_headers=px.client_max_headers,
            lingering_time=LINGERING_SECONDS,
        )

    proxy_runner = runner(proxy_app)
    admin_runner = web.AppRunner(
        admin_app, access_log=None, keepalive_timeout=px.client_header_timeout_seconds
    )
    await proxy_runner.setup()  # first: its start-up builds what the console's app uses
    await admin_runner.setup()
    console_runner = runner(console_app) if console_app is not None else None
    if console_runner is not None:
        await console_runner.setup()

    def browsers_gate(listen: Listen) -> ConnectionGate:
        return ConnectionGate(
            allow=listen.allow,
            max_total=px.client_max_connections,
            max_per_address=px.client_max_connections_per_address,
            exempt=px.trusted_proxies,
        )

    proxy_gate = browsers_gate(cfg.proxy_listen)
    admin_gate = ConnectionGate(allow=cfg.admin_listen.allow, max_total=ADMIN_MAX_CONNECTIONS)
    metrics.connections_open.labels("proxy").set_function(lambda: proxy_gate.open)
    metrics.connections_open.labels("admin").set_function(lambda: admin_gate.open)

    def refused(listener: str) -> Callable[[str], None]:
        return lambda reason: metrics.connections_refused.labels(listener, reason).inc()

    timeout = px.client_header_timeout_seconds
    proxy = (
        GatedSite(
            proxy_runner,
            cfg.proxy_listen,
            proxy_gate,
            refused("proxy"),
            handshake_timeout=timeout,
            sock=proxy_socket,
        )
        if serve_proxy
        else None
    )
    admin = GatedSite(
        admin_runner, cfg.admin_listen, admin_gate, refused("admin"), handshake_timeout=timeout
    )
    console: GatedSite | None = None
    if console_runner is not None:
        assert cfg.console is not None
        console_gate = browsers_gate(cfg.console.listen)
        metrics.connections_open.labels("console").set_function(lambda: console_gate.open)
        console = GatedSite(
            console_runner,
            cfg.console.listen,
            console_gate,
            refused("console"),
            handshake_timeout=timeout,
            sock=console_socket,
        )
    runners = (console_runner, proxy_runner, admin_runner)
    try:
        if proxy is not None:
            await proxy.start()
        if console is not None:
            await console.start()
        await admin.start()
    except BaseException:
        for r in runners:
            if r is not None:
                await r.cleanup()
        raise
    return Listeners(proxy, admin, tuple(r for r in runners if r is not None), console)


def shared_sockets(listen: Listen, n: int) -> list[socket.socket]:
    """``n`` sockets bound (not yet listening) to a listener's port (the proxy's, the console's)
    with SO_REUSEPORT, one per worker, held for the supervisor's lifetime: a port another program
    holds fails here, with the port's message, and a port 0 is chosen once for every worker. A
    bound socket that does not listen receives no connection; once listening, each keeps its
    queue of connections while its worker starts again (the supervisor's copy keeps it open)."""
    family, _, _, _, address = socket.getaddrinfo(
        listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            address = sock.getsockname()  # port 0: the port the first one was given
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
