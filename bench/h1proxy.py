"""A protocol-level HTTP/1.1 reverse proxy on uvloop + httptools (llhttp): the ceiling row of
`make bench` (docs/benchmarks.md, decision 018).

No framework between the socket and the parser: an asyncio.Protocol per client connection feeds
httptools.HttpRequestParser, and a keep-alive pool of upstream connections (asyncio.Protocol +
httptools.HttpResponseParser) carries each request. Bodies stream both ways as the parser hands
them over, Content-Length or chunked; hop-by-hop headers are dropped and X-Forwarded-For is set.
It does what any reverse proxy must and nothing the gateway adds, like the bare aiohttp proxy.

Requests pipelined on one connection are answered in order: only the oldest is in flight, the
others wait with their bytes buffered.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Protocol

import httptools

from gateway.core.tasks import spawn

# RFC 9110 §7.6.1 connection-specific fields (and the legacy ones), lower-case bytes. Host and
# Expect are the proxy's to write or answer; Content-Length is rewritten with the framing.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROPPED = HOP_BY_HOP | {b"host", b"expect", b"content-length", b"x-forwarded-for"}
_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}
NO_BODY = (204, 304)

Headers = list[tuple[bytes, bytes]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class Sink(Protocol):
    """Who receives one upstream exchange: the response as it arrives, or the failure."""

    def upstream_ready(self, conn: UpstreamConnection) -> None: ...
    def response_head(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...
    def upstream_failed(self, exc: BaseException | None) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream, serving one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.head_only = False  # the request was HEAD: the response has no body whatever it says
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: Headers = []
        self._started = False
        self._delimited_by_close = False
        self._renew_parser = False

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(e)
            return
        if self._renew_parser:  # a HEAD response ended at its head; llhttp still waits for a body
            self._renew_parser = False
            self._parser = httptools.HttpResponseParser(self)
            self._finish(keep_alive=True)

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue): the proxy answers those itself
            return
        self._started = True
        framed = any(
            n.lower() in (b"content-length", b"transfer-encoding") for n, _ in self._headers
        )
        self._delimited_by_close = not framed and status not in NO_BODY and not self.head_only
        if self.sink is not None:
            self.sink.response_head(status, self._reason, self._headers)
        if self.head_only:
            self._renew_parser = True

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        if not self._started:  # the end of an interim response
            self._reason, self._headers = b"", []
            return
        if not self._renew_parser:
            self._finish(keep_alive=self._parser.should_keep_alive())

    def _finish(self, *, keep_alive: bool) -> None:
        sink, self.sink = self.sink, None
        self._reason, self._headers, self._started, self.head_only = b"", [], False, False
        if keep_alive and not self._delimited_by_close:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.close()
        if sink is not None:
            sink.response_end()

    def _fail(self, exc: BaseException | None) -> None:
        sink, self.sink = self.sink, None
        if self.transport is not None:
            self.transport.close()
        if sink is not None:
            sink.upstream_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)
        if self.sink is None:
            return
        if self._started and self._delimited_by_close and exc is None:
            self._finish(keep_alive=False)  # a response without framing ends with its connection
        else:
            self._fail(exc)

    def pause_writing(self) -> None:  # the upstream reads the request body slower than it comes
        pause = getattr(self.sink, "pause_reading", None)
        if pause is not None:
            pause()

    def resume_writing(self) -> None:
        resume = getattr(self.sink, "resume_reading", None)
        if resume is not None:
            resume()


class Pool:
    """Keep-alive connections to one upstream (host, port[, TLS])."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 256,
        connect_timeout: float | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.authority = f"{host}:{port}".encode()
        self._ssl = ssl_context
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._idle: deque[UpstreamConnection] = deque()

    def acquire(self, sink: Sink) -> None:
        """Hands ``sink`` a connection: an idle one now, or a new one once connected."""
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.sink = sink
                sink.upstream_ready(conn)
                return
        spawn(self._connect(sink), name="upstream-connect")

    async def _connect(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=self._ssl
                )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            sink.upstream_failed(e)
            return
        conn.sink = sink
        sink.upstream_ready(conn)

    def release(self, conn: UpstreamConnection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()


class _Request:
    """One client request in flight: the Sink of its upstream exchange."""

    __slots__ = (
        "body_done",
        "chunked",
        "client",
        "conn",
        "head_only",
        "keep_alive",
        "pending",
        "respond_chunked",
    )

    def __init__(self, client: ProxyConnection, keep_alive: bool, head_only: bool) -> None:
        self.client = client
        self.conn: UpstreamConnection | None = None
        self.pending: list[bytes] = []
        self.chunked = False
        self.body_done = False
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.respond_chunked = False

    def send(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.send(data)
        else:
            self.pending.append(data)

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        if self.client.transport is None or self.client.transport.is_closing():
            conn.sink = None
            conn.pool.release(conn)
            return
        self.conn = conn
        conn.head_only = self.head_only
        conn.send(b"".join(self.pending))
        self.pending = []

    def response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        length = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = value
            if lower not in _RESPONSE_DROPPED:
                out.append(b"%s: %s\r\n" % (name, value))
        if length is not None:
            out.append(b"Content-Length: %s\r\n" % length)
        elif not self.head_only and status not in NO_BODY:
            self.respond_chunked = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        self.client.write(b"".join(out))

    def response_body(self, data: bytes) -> None:
        self.client.write(chunk(data) if self.respond_chunked else data)

    def response_end(self) -> None:
        if self.respond_chunked:
            self.client.write(LAST_CHUNK)
        self.conn = None
        self.client.request_done(self)

    def upstream_failed(self, exc: BaseException | None) -> None:
        self.conn = None
        self.client.upstream_failed(self)

    def pause_reading(self) -> None:
        self.client.pause_reading()

    def resume_reading(self) -> None:
        self.client.resume_reading()


BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ProxyConnection(asyncio.Protocol):
    """One client connection: parses requests and relays each through the pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._peer = b""
        self._url = b""
        self._headers: Headers = []
        self._current: _Request | None = None  # the one being parsed
        self._queue: deque[_Request] = deque()  # in order; only the first is in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]).encode() if peer else b""

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered like any request, then closed: what follows is not HTTP/1.1.
            self.pause_reading()
            if self._queue:
                self._queue[-1].keep_alive = False
            else:
                self._close()
        except httptools.HttpParserError:
            self.write(BAD_REQUEST)
            self._close()

    def on_message_begin(self) -> None:
        self._url, self._headers = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        method = p.get_method()
        req = _Request(self, p.should_keep_alive(), method == b"HEAD")
        out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, self._url, self.pool.authority)]
        forwarded_for = self._peer
        expect = False
        for name, value in self._headers:
            lower = name.lower()
            if lower in _REQUEST_DROPPED:
                if lower == b"content-length":
                    out.append(b"Content-Length: %s\r\n" % value)
                elif lower == b"transfer-encoding":
                    req.chunked = True
                elif lower == b"expect":
                    expect = value.lower() == b"100-continue"
                continue
            out.append(b"%s: %s\r\n" % (name, value))
        if req.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        out.append(b"X-Forwarded-For: %s\r\n\r\n" % forwarded_for)
        req.pending.append(b"".join(out))
        if expect and p.get_http_version() == "1.1":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._current = req
        self._queue.append(req)
        if len(self._queue) == 1:
            self.pool.acquire(req)

    def on_body(self, body: bytes) -> None:
        req = self._current
        assert req is not None
        req.send(chunk(body) if req.chunked else body)

    def on_message_complete(self) -> None:
        req = self._current
        assert req is not None
        if req.chunked:
            req.send(LAST_CHUNK)
        req.body_done = True
        self._current = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def request_done(self, req: _Request) -> None:
        self._queue.popleft()
        if not req.keep_alive:
            self._close()
        elif self._queue:
            self.pool.acquire(self._queue[0])

    def upstream_failed(self, req: _Request) -> None:
        self.write(BAD_GATEWAY)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for req in self._queue:  # mid-exchange: its upstream connection cannot be reused
            conn, req.conn = req.conn, None
            if conn is not None:
                conn.sink = None
                if conn.transport is not None:
                    conn.transport.close()
        self._queue.clear()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # The client reads the response slower than the upstream sends it: stop reading upstream.
    def pause_writing(self) -> None:
        conn = self._queue[0].conn if self._queue else None
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        conn = self._queue[0].conn if self._queue else None
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()


async def serve(port: int, upstream_host: str, upstream_port: int, **kw: Any) -> None:
    pool = Pool(upstream_host, upstream_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ProxyConnection(pool), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    async with server:
        await server.serve_forever()
