"""Prototype (issue 12, "Toward nginx"): the gateway's proxy listener on uvloop + httptools,
behind the *same* Pipeline. Not a second data path of the gateway: it lives in bench/ to be
measured and tested against, and is proposed or dropped in docs/decisions/018-data-path.md.

What is the gateway's own, unchanged: the composition root (`gateway.app.build`: spool, shipper,
store, policies, token keys, metrics), `Pipeline.handle` (canonical path, routes, header checks,
identity, authorisation, subjects, the access event durable before forwarding, the outcome before
the last chunk, metrics), `upstream_headers`/`response_headers` (OWNED, STRIPPED, X-Forwarded-*),
the error bodies (errors_http) and the connection gate (listeners.ConnectionGate).

What is replaced: aiohttp's server (an asyncio.Protocol feeding httptools.HttpRequestParser), and
aiohttp's client (`FastForwarder`, the same contract as proxy.Forwarder, on the keep-alive pool of
bench/h1proxy.py). The pipeline reads the request through `ProtoRequest`, which carries the few
attributes of web.Request it uses (duck typing: mypy does not check bench/).

Run it: `python bench/fastpath.py --config gateway.yaml`, i.e. `pd-gateway serve` with the proxy
listener swapped (the admin port stays on aiohttp).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import httptools
from aiohttp import web
from aiohttp.test_utils import BaseTestServer
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gateway

from bench.h1proxy import Headers, Pool, UpstreamConnection
from gateway import app as gateway_app
from gateway import tls
from gateway.config import Config, Route
from gateway.cookies import sets_cookie, without_cookies
from gateway.errors import GatewayError
from gateway.errors_http import REQUEST_ID, _render, error_response
from gateway.ids import new_id
from gateway.listeners import ADMIN_MAX_CONNECTIONS, ConnectionGate, GatedSite, refusal
from gateway.logs import request_id_var
from gateway.method_override import BodyOverrideScanner
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.proxy import (
    BodyOverride,
    BodyTooLarge,
    ClientAborted,
    ClientTooSlow,
    Exchange,
    UpstreamError,
    response_headers,
    upstream_headers,
)
from gateway.tasks import spawn

log = logging.getLogger("bench.fastpath")

# Stands for "the response head went to the client" where the pipeline expects a StreamResponse.
SENT = web.StreamResponse()
_HIGH_WATER = 256 * 1024  # request body buffered before the client is paused
_PARSER_ERROR = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Body:
    """A request body as httptools hands it over; read by the forwarder, with backpressure."""

    __slots__ = ("_chunks", "_conn", "_error", "_size", "_waiter", "complete")

    def __init__(self, conn: ProxyConnection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.complete = False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    async def read(self) -> bytes:
        """The next chunk; b"" at the end. Raises if the client went away mid-body."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            self._conn.resume_reading()
            await self._waiter
        data = self._chunks.popleft()
        self._size -= len(data)
        return data


class ProtoRequest:
    """What Pipeline.handle and FastForwarder read of a request (a subset of web.Request)."""

    __slots__ = (
        "body",
        "body_exists",
        "content_length",
        "head_sent",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "method",
        "raw_path",
        "remote",
        "request_id",
        "scheme",
        "transport",
    )
    body: Body
    body_exists: bool
    content_length: int | None
    head_sent: bool  # the response head went out: an error now can only cut the connection
    headers: CIMultiDictProxy[str]
    host: str
    http11: bool
    keep_alive: bool
    method: str
    raw_path: str
    remote: str
    request_id: str
    scheme: str
    transport: ProxyConnection  # what the pipeline's _abort closes

    def __getitem__(self, key: object) -> str:
        if key is REQUEST_ID:
            return self.request_id
        raise KeyError(key)


def _pool_for(url: str, contexts: dict[str, ssl.SSLContext], name: str, timeout: float) -> Pool:
    u = URL(url)
    assert u.host is not None and u.port is not None
    ctx = contexts.get(name) or (ssl.create_default_context() if u.scheme == "https" else None)
    pool = Pool(u.host, u.port, ssl_context=ctx, connect_timeout=timeout)
    # The Host header aiohttp's client writes: the port only where it is not the default.
    host = u.raw_host or u.host
    pool.authority = (host if u.is_default_port() else f"{host}:{u.port}").encode()
    return pool


class _Relay:
    """One upstream exchange (the Sink of h1proxy's pool), awaited by FastForwarder.forward."""

    def __init__(self, client: ProxyConnection, exchange: Exchange, max_response: int) -> None:
        loop = asyncio.get_running_loop()
        self.client = client
        self.exchange = exchange
        self.max_response = max_response
        self.ready: asyncio.Future[UpstreamConnection] = loop.create_future()
        self.head: asyncio.Future[tuple[int, bytes, Headers]] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.conn: UpstreamConnection | None = None
        self.relaying = False
        self.chunked = False
        self.early: list[bytes] = []  # body bytes that came with the head, before relaying began
        self.held: bytes | None = None  # the last chunk, written once the outcome is on record
        self.error: UpstreamError | None = None
        self._loop = loop
        self._last = 0.0  # loop time of the upstream's last sign of life
        self._read_timeout = 0.0
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, read_timeout: float, deadline: float | None) -> None:
        """From now on: no silence from the upstream longer than ``read_timeout`` (aiohttp's
        sock_read), and nothing past ``deadline``; either fails the awaited step with
        TimeoutError. One timer per exchange, re-armed only when it fires."""
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._last = self._loop.time()
        self._schedule()

    def _schedule(self) -> None:
        when = self._last + self._read_timeout
        if self._deadline is not None:
            when = min(when, self._deadline)
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        late = self._deadline is not None and now >= self._deadline
        if late or now - self._last >= self._read_timeout:
            self._timer = None
            self.upstream_failed(TimeoutError())
            self.abandon()
            return
        self._schedule()

    def unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Sink
    def upstream_ready(self, conn: UpstreamConnection) -> None:
        if self.ready.done():  # forward() gave up meanwhile
            conn.sink = None
            conn.pool.release(conn)
            return
        self.conn = conn
        self.ready.set_result(conn)

    def response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self._last = self._loop.time()
        if not self.head.done():
            self.head.set_result((status, reason, headers))

    def response_body(self, data: bytes) -> None:
        self._last = self._loop.time()
        if not self.relaying:
            self.early.append(data)
            return
        self.take(data)

    def take(self, data: bytes) -> None:
        ex = self.exchange
        if self.held is not None:
            self.client.write(_chunk(self.held) if self.chunked else self.held)
            ex.bytes_out += len(self.held)
        if ex.bytes_out + len(data) > self.max_response:
            self.held = None
            self.error = UpstreamError(502, "upstream_response_too_large")
            self.abandon()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.held = data
        if ex.copy is not None:
            ex.copy.add(data)

    def response_end(self) -> None:
        self.conn = None
        if not self.done.done():
            self.done.set_result(None)

    def upstream_failed(self, exc: BaseException | None) -> None:
        self.conn = None
        for fut in (self.ready, self.head, self.done):
            if not fut.done():
                fut.set_exception(exc if exc is not None else ConnectionResetError())
                fut.exception()  # retrieved: only the one awaited matters
                break

    def pause_reading(self) -> None:
        self.client.pause_reading()

    def resume_reading(self) -> None:
        self.client.resume_reading()

    def abandon(self) -> None:
        """The exchange ends early: its upstream connection cannot be reused."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.sink = None
            if conn.transport is not None:
                conn.transport.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _enc(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class FastForwarder:
    """proxy.Forwarder's contract on httptools + the h1proxy pool (see gateway/proxy.py)."""

    def __init__(self, cfg: Config, gateway_cookies: frozenset[str] = frozenset()) -> None:
        px = cfg.proxy
        self._trusted = tuple(px.trusted_proxies)
        self._forward_authorization = px.forward_authorization
        self._connect_timeout = px.connect_timeout_seconds
        self._read_timeout = px.read_timeout_seconds
        self._max_body = px.max_body_bytes
        self._body_timeout = px.client_body_timeout_seconds
        self._max_response = px.upstream_max_response_bytes
        self._total = px.upstream_timeout_seconds
        self._own_cookies = gateway_cookies
        contexts = {
            name: tls.client_context(t.ca_file, t.client_cert_file, t.client_key_file)
            for name, t in cfg.upstream_tls.items()
        }
        self._pools: dict[str, Pool] = {}
        self._base: dict[str, bytes] = {}
        for route in cfg.routes:
            if route.upstream_url and route.upstream not in self._pools:
                self._pools[route.upstream] = _pool_for(
                    route.upstream_url, contexts, route.upstream, self._connect_timeout
                )
                path = URL(route.upstream_url).raw_path
                self._base[route.upstream] = b"" if path == "/" else _enc(path.rstrip("/"))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    async def forward(
        self,
        request: ProtoRequest,
        route: Route,
        *,
        request_id: str,
        injected: dict[str, str],
        exchange: Exchange,
        before_last_chunk: Callable[[], Awaitable[None]],
        strip: frozenset[str] = frozenset(),
    ) -> web.StreamResponse:
        headers = upstream_headers(
            request,  # type: ignore[arg-type]
            trusted=self._trusted,
            forward_authorization=self._forward_authorization,
            injected=injected,
            strip=strip,
            keep_override="header" in route.method_override,
        )
        if self._own_cookies and "Cookie" in headers:
            kept = [without_cookies(c, self._own_cookies) for c in headers.getall("Cookie")]
            del headers["Cookie"]
            for value in kept:
                if value is not None:
                    headers.add("Cookie", value)
        if (request.content_length or 0) > self._max_body:
            raise BodyTooLarge()  # declared too large: nothing is sent upstream
        pool = self._pools[route.upstream]
        # The raw path and query, byte for byte: what was authorised is what is forwarded.
        out = [
            b"%s %s%s HTTP/1.1\r\nHost: %s\r\n"
            % (
                _enc(request.method),
                self._base[route.upstream],
                _enc(request.raw_path),
                pool.authority,
            )
        ]
        for name, value in headers.items():
            out.append(b"%s: %s\r\n" % (_enc(name), _enc(value)))
        chunked = request.body_exists and "Content-Length" not in headers
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        out.append(b"\r\n")
        client = request.transport
        relay = _Relay(client, exchange, self._max_response)
        client.active = relay
        t0 = time.perf_counter()
        # The whole exchange is bounded (upstream_timeout_seconds): by the relay's own timer once
        # the request is sent; an asyncio.timeout costs more than the rest of a small exchange, so
        # only a request with a body to upload gets one.
        deadline = asyncio.get_running_loop().time() + self._total if self._total else None
        try:
            async with asyncio.timeout(self._total if request.body_exists else None):
                return await self._exchange(
                    request, relay, pool, b"".join(out), chunked, before_last_chunk, t0, deadline
                )
        except TimeoutError:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise exchange.client_failure or UpstreamError(504, "upstream_timeout") from None
        finally:
            relay.unwatch()
            client.active = None
            if relay.conn is not None:  # not ended cleanly: never reused
                relay.abandon()

    async def _exchange(
        self,
        request: ProtoRequest,
        relay: _Relay,
        pool: Pool,
        head: bytes,
        chunked: bool,
        before_last_chunk: Callable[[], Awaitable[None]],
        t0: float,
        deadline: float | None,
    ) -> web.StreamResponse:
        exchange = relay.exchange
        client = request.transport
        pool.acquire(relay)
        try:
            conn = await relay.ready
        except TimeoutError as e:
            raise UpstreamError(504, "upstream_timeout") from e
        except ssl.SSLError as e:
            raise UpstreamError(502, "upstream_tls_error") from e
        except OSError as e:
            raise UpstreamError(502, "upstream_unreachable") from e
        conn.head_only = request.method == "HEAD"
        if request.body_exists:
            if request.http11 and request.headers.get("Expect", "").lower() == "100-continue":
                # Only now, with the request authorised and audited, is the body asked for.
                client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._send_body(request, relay, conn, head, chunked)
        else:
            conn.send(head)
        relay.watch(self._read_timeout, deadline)
        try:
            status, reason, up_headers = await relay.head
        except TimeoutError as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise UpstreamError(504, "upstream_timeout") from e
        except (OSError, httptools.HttpParserError) as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise exchange.client_failure or UpstreamError(502, "upstream_error") from e
        exchange.status = status
        upstream = _UpstreamView(CIMultiDictProxy(CIMultiDict(_decode(up_headers))))
        if self._own_cookies and sets_cookie(
            upstream.headers.getall("Set-Cookie", ()), self._own_cookies
        ):
            raise UpstreamError(502, "upstream_set_gateway_cookie")
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._max_response:
            raise UpstreamError(502, "upstream_response_too_large")
        resp_headers = response_headers(upstream, request.request_id)  # type: ignore[arg-type]
        bodyless = request.method == "HEAD" or status in (204, 304)
        relay.chunked = length is None and not bodyless and request.http11
        if length is None and not bodyless and not request.http11:
            request.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        lines += [b"%s: %s\r\n" % (_enc(n), _enc(v)) for n, v in resp_headers.items()]
        if relay.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not request.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        client.write(b"".join(lines))
        request.head_sent = True
        exchange.response = SENT
        early, relay.early = relay.early, []
        relay.relaying = True
        for data in early:
            relay.take(data)
        try:
            await relay.done
        except TimeoutError as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise UpstreamError(504, "upstream_timeout") from e
        except Exception as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise UpstreamError(502, "upstream_aborted") from e
        exchange.upstream_seconds = time.perf_counter() - t0
        if relay.error is not None:
            raise relay.error
        held, relay.held = relay.held, None
        if held is not None:
            exchange.bytes_out += len(held)
        await before_last_chunk()
        if held is not None:
            client.write(_chunk(held) if relay.chunked else held)
        if relay.chunked:
            client.write(b"0\r\n\r\n")
        return SENT

    async def _send_body(
        self,
        request: ProtoRequest,
        relay: _Relay,
        conn: UpstreamConnection,
        head: bytes,
        chunked: bool,
    ) -> None:
        """The head goes out with the first chunk of the body (as aiohttp's client does it): a
        body refused in its first chunk leaves the upstream without even a request line."""
        exchange = relay.exchange
        overrides = BodyOverrideScanner()
        while True:
            try:
                async with asyncio.timeout(self._body_timeout):  # slow-body clients
                    data = await request.body.read()
            except TimeoutError:
                exchange.client_failure = ClientTooSlow()
                raise exchange.client_failure from None
            except Exception as e:  # the client hung up or broke the framing mid-body
                exchange.client_failure = ClientAborted()
                raise exchange.client_failure from e
            if not data:
                break
            exchange.bytes_in += len(data)
            if exchange.bytes_in > self._max_body:  # chunked past the limit: cut it
                exchange.client_failure = BodyTooLarge()
                raise exchange.client_failure
            if overrides.feed(data):  # the chunk that completes `_method` is never sent
                exchange.client_failure = BodyOverride()
                raise exchange.client_failure
            if relay.conn is None:  # the upstream answered or went away mid-body
                break
            conn.send(head + (_chunk(data) if chunked else data))
            head = b""
        if relay.conn is not None:
            conn.send(head + (b"0\r\n\r\n" if chunked else b""))


class _UpstreamView:
    """The one attribute of aiohttp's ClientResponse that proxy.response_headers reads."""

    __slots__ = ("headers",)

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        self.headers = headers


def _decode(headers: Headers) -> list[tuple[str, str]]:
    return [
        (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for n, v in headers
    ]


def _serialise(resp: web.Response, close: bool, head: bool = False) -> bytes:
    """An error page or JSON answer built by errors_http, as bytes on the wire (for a HEAD
    request: its length, not its body)."""
    body = resp.body if isinstance(resp.body, bytes) else b""
    lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, _enc(resp.reason))]
    lines += [b"%s: %s\r\n" % (_enc(n), _enc(v)) for n, v in resp.headers.items()]
    lines.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        lines.append(b"Connection: close\r\n")
    return b"".join(lines) + b"\r\n" + (b"" if head else body)


class Listener:
    """Shared by every connection of the proxy listener."""

    def __init__(
        self,
        cfg: Config,
        pipeline: Pipeline,
        metrics: Metrics,
        gate: ConnectionGate,
        *,
        tls_on: bool,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.gate = gate
        self.scheme = "https" if tls_on else "http"
        px = cfg.proxy
        self.header_timeout = px.client_header_timeout_seconds
        self.max_line = px.client_max_header_bytes
        self.max_headers = px.client_max_headers
        self.connections: set[ProxyConnection] = set()

    def busy(self) -> bool:
        return any(conn.busy for conn in self.connections)


class ProxyConnection(asyncio.Protocol):
    """One client connection: httptools parses, each request runs Pipeline.handle in order."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.active: _Relay | None = None  # the upstream exchange now relaying to this client
        self._parser = httptools.HttpRequestParser(self)
        self._address = ""
        self._host = ""
        self._admitted = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._current: ProtoRequest | None = None
        self._queue: deque[ProtoRequest] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._broken = False  # a pipelined request failed to parse: answered after those before

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else ""
        sock = transport.get_extra_info("sockname")
        self._host = f"{sock[0]}:{sock[1]}" if sock else ""
        reason = self.listener.gate.admit(self._address)
        if reason is not None:
            self.listener.metrics.connections_refused.labels("proxy", reason).inc()
            self.transport = None
            transport.write(refusal(reason))  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        self.listener.connections.add(self)
        self._arm()

    @property
    def busy(self) -> bool:
        """A request is being answered (shutdown waits for it)."""
        return bool(self._queue)

    def _arm(self) -> None:
        """A complete request head must arrive within the header timeout (slowloris)."""
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.listener.header_timeout, self._close)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.pause_reading()  # answered like any request, then closed: the rest is not ours
            if self._queue:
                self._queue[-1].keep_alive = False
            else:
                self._close()
        except httptools.HttpParserError as e:
            self._refuse_malformed(type(e).__name__)

    def _refuse_malformed(self, kind: str) -> None:
        log.warning("malformed request refused by the HTTP parser", extra={"error": kind})
        if self._current is not None and self._current.body is not None:
            self._current.body.fail(ClientAborted())
        if not self._queue or self._queue[0] is self._current:
            self.write(_PARSER_ERROR)
            self._close()
        else:  # answered in order: after the requests before it
            self._broken = True
            self.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None
        if self._admitted:
            self.listener.gate.release(self._address)
            self.listener.connections.discard(self)
            self._admitted = False
        for req in self._queue:
            req.body.fail(ClientAborted())
        if self.active is not None:
            self.active.abandon()

    def pause_writing(self) -> None:  # a slow reader: stop reading the upstream
        conn = self.active.conn if self.active is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        conn = self.active.conn if self.active is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.listener.max_line:
            raise ValueError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp has no size limits of its own: aiohttp's (max_field_size, max_headers) here.
        # Folded lines llhttp refuses itself; a CR or LF in a value is refused all the same.
        if len(name) + len(value) + 2 > self.listener.max_line or b"\r" in value or b"\n" in value:
            raise ValueError("malformed header")
        self._headers.append((name, value))
        if len(self._headers) > self.listener.max_headers:
            raise ValueError("too many headers")

    def on_headers_complete(self) -> None:
        p = self._parser
        headers = CIMultiDictProxy(CIMultiDict(_decode(self._headers)))
        if len(headers.getall("Host", ())) > 1:
            raise ValueError("two host headers")
        req = ProtoRequest()
        req.method = p.get_method().decode("ascii")
        req.raw_path = self._url.decode("utf-8", "surrogateescape")
        req.headers = headers
        req.remote = self._address
        req.scheme = self.listener.scheme
        req.host = headers.get("Host", self._host)
        req.http11 = p.get_http_version() == "1.1"
        req.keep_alive = p.should_keep_alive()
        length = headers.get("Content-Length")
        req.content_length = int(length) if length is not None else None
        req.body_exists = bool(req.content_length) or "Transfer-Encoding" in headers
        req.body = Body(self)
        req.request_id = new_id()
        req.transport = self
        req.head_sent = False
        self._current = req
        self._queue.append(req)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if len(self._queue) == 1:
            spawn(self._handle(req), name="request")

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.body.feed(body)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.body.finish()
            self._current = None

    # writing
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:  # the pipeline's _abort: the exchange was cut short
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._paused and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()

    async def _handle(self, req: ProtoRequest) -> None:
        close = not req.keep_alive
        token = request_id_var.set(req.request_id)
        try:
            close = await self._respond(req) or close
        finally:
            request_id_var.reset(token)
        if not req.body.complete:
            close = True  # the rest of a body nobody read: not worth reading (refused, cut)
        self._queue.popleft()
        if close or self.transport is None:
            self._close()
            return
        if self._broken and not self._queue:
            self.write(_PARSER_ERROR)
            self._close()
            return
        self.resume_reading()
        if self._queue:
            spawn(self._handle(self._queue[0]), name="request")
        elif self._current is None:
            self._arm()

    async def _respond(self, req: ProtoRequest) -> bool:
        """Runs the pipeline; True if the connection must close after the answer."""
        expect = req.headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":  # pipeline.expect_handler
            resp = error_response(
                417, "expectation_failed", "only Expect: 100-continue is supported", req.request_id
            )
            self.write(_serialise(resp, True))
            return True
        try:
            await self.listener.pipeline.handle(req)  # type: ignore[arg-type]
            return False
        except GatewayError as e:
            if req.head_sent:
                return True
            resp = _render(
                req,  # type: ignore[arg-type]
                e.status,
                e.code,
                e.public_message,
                req.request_id,
                realm="pd-gateway",
                details=e.public_details,
            )
            close = e.close_connection or not req.keep_alive
            self.write(_serialise(resp, close, req.method == "HEAD"))
            return e.close_connection
        except Exception:
            log.exception("unhandled error in request path")
            if req.head_sent:
                return True
            self.listener.metrics.denials.labels("-", "internal_error").inc()
            resp = error_response(500, "internal_error", "internal error", req.request_id)
            self.write(_serialise(resp, not req.keep_alive, req.method == "HEAD"))
            return False


class _Port:
    def __init__(self, port: int, scheme: str) -> None:
        self.port = port
        self._scheme = scheme
        self.host = "127.0.0.1"

    @property
    def name(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"


class Served:
    """The prototype's proxy listener (and the admin app on aiohttp), started from a Config; used
    like gateway.listeners.Listeners (``.proxy.port``, ``.admin.name``, ``close()``)."""

    def __init__(self, shutdown_timeout: float) -> None:
        self.proxy = _Port(0, "http")
        self.admin = _Port(0, "http")
        self._shutdown_timeout = shutdown_timeout
        self._server: asyncio.AbstractServer | None = None
        self._listener: Listener | None = None
        self._runners: list[web.AppRunner] = []
        self._forwarder: FastForwarder | None = None

    async def close(self) -> None:
        """Stop accepting, drain in-flight requests (proxy.shutdown_timeout_seconds), close the
        connections, then the gateway's own shutdown (spool flushed last)."""
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._shutdown_timeout
            while self._listener.busy() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self._listener.connections):
                conn.close()
        if self._forwarder is not None:
            self._forwarder.close()
        for runner in reversed(self._runners):
            await runner.cleanup()


async def start(
    cfg: Config,
    proxy_app: web.Application,
    admin_app: web.Application | None,
    metrics: Metrics,
    *,
    host: str | None = None,
    port: int | None = None,
    serve_proxy: bool = True,
    reuse_port: bool = False,
) -> Served:
    """Starts the gateway's apps (cleanup_ctx: shipper, spool, pipeline, …) and, in place of
    aiohttp's proxy site, the httptools listener; the admin app on aiohttp as the gateway does."""
    served = Served(cfg.proxy.shutdown_timeout_seconds)
    proxy_runner = web.AppRunner(proxy_app, access_log=None)
    await proxy_runner.setup()  # runs the gateway's start-up; no aiohttp site is bound
    served._runners.append(proxy_runner)
    gw = proxy_app[gateway_app.GATEWAY]
    forwarder = FastForwarder(
        cfg, gw.browser.cookie_names if gw.browser is not None else frozenset()
    )
    served._forwarder = forwarder

    pipeline = gw.pipeline  # built by the gateway's start-up (app._pipeline_ctx), as is
    assert pipeline is not None
    pipeline._forwarder = forwarder  # type: ignore[assignment]  # the one swap: aiohttp's client out

    listen = cfg.proxy_listen
    gate = ConnectionGate(
        allow=listen.allow,
        max_total=cfg.proxy.client_max_connections,
        max_per_address=cfg.proxy.client_max_connections_per_address,
        exempt=cfg.proxy.trusted_proxies,
    )
    metrics.connections_open.labels("proxy").set_function(lambda: gate.open)
    ctx = (
        tls.server_context(listen.tls.cert_file, listen.tls.key_file, listen.tls.client_ca_file)
        if listen.tls is not None
        else None
    )
    listener = Listener(cfg, pipeline, metrics, gate, tls_on=ctx is not None)
    served._listener = listener
    served.proxy = _Port(0, listener.scheme)
    served.proxy.host = listen.host if host is None else host
    loop = asyncio.get_running_loop()
    if serve_proxy:  # listeners.start's keywords on main since `serve --workers` (decision 016)
        served._server = await loop.create_server(
            lambda: ProxyConnection(listener),
            listen.host if host is None else host,
            listen.port if port is None else port,
            ssl=ctx,
            ssl_handshake_timeout=cfg.proxy.client_header_timeout_seconds if ctx else None,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        served.proxy.port = served._server.sockets[0].getsockname()[1]
    if admin_app is not None:
        admin_runner = web.AppRunner(admin_app, access_log=None)
        await admin_runner.setup()
        served._runners.append(admin_runner)
        admin_gate = ConnectionGate(allow=cfg.admin_listen.allow, max_total=ADMIN_MAX_CONNECTIONS)
        metrics.connections_open.labels("admin").set_function(lambda: admin_gate.open)
        site = GatedSite(
            admin_runner,
            cfg.admin_listen,
            admin_gate,
            lambda reason: metrics.connections_refused.labels("admin", reason).inc(),
            handshake_timeout=cfg.proxy.client_header_timeout_seconds,
        )
        await site.start()
        served.admin.port = site.port
        served.admin.host = cfg.admin_listen.host
    return served


class PrototypeTestServer(BaseTestServer):
    """For aiohttp's TestClient (tests/conftest.py, PDGW_DATA_PATH=prototype): the gateway's proxy
    app started by `start`, served by the prototype listener on a free loopback port."""

    def __init__(self, app: web.Application, cfg: Config) -> None:
        super().__init__(host="127.0.0.1")
        self.app = app
        self._cfg = cfg
        self._served: Served | None = None

    async def _make_runner(self, **kwargs: object) -> web.BaseRunner:
        raise NotImplementedError  # start_server does it all

    async def start_server(self, loop: object = None, **kwargs: object) -> None:
        if self._served is not None:
            return
        metrics = self.app[gateway_app.GATEWAY].metrics
        self._served = await start(self._cfg, self.app, None, metrics, host=self.host, port=0)
        self.runner = self._served._runners[0]
        self.port = self._served.proxy.port
        self.scheme = "https" if self._cfg.proxy_listen.tls else "http"
        self._root = URL(f"{self.scheme}://{self.host}:{self.port}")

    async def close(self) -> None:
        if self._served is not None and not self._closed:
            await self._served.close()
            self._root = None
            self._closed = True


def main() -> int:
    """`pd-gateway serve ARGS` with one swap: the proxy listener is this prototype's. Logging,
    signals, start-up, draining and every error message are the gateway's own."""
    from gateway import listeners
    from gateway.cli import main as cli_main

    listeners.start = start  # type: ignore[assignment]
    return cli_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
