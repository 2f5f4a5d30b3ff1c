"""Forwarding to an upstream: the request streamed there and the response streamed back.

Contract: ``Forwarder.forward`` streams the request to the route's upstream and the response back
without holding a whole body; it calls ``before_last_chunk()`` once the response's size is known
and before the last chunk is written, so the outcome is on record before the client has all of
the response. A failed exchange raises an ``ExchangeError``: ``UpstreamError`` when the upstream
failed (502, 504), ``ClientFault`` when the client's side did (413, 408, 400, 499) — the two are
counted apart, so a client's oversized or slow body never raises the upstream-errors alert.
Header hygiene is ``gateway.forwarding.headers``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config.model import IPNetwork, Route
from gateway.core.errors import GatewayError
from gateway.forwarding.addresses import AddressGuard, InternalAddress
from gateway.forwarding.body_names import BodyNames
from gateway.forwarding.headers import public_origin, response_headers, upstream_headers
from gateway.forwarding.method_override import OVERRIDE_PARAM
from gateway.forwarding.response_subjects import ResponseCopy
from gateway.identity.cookies import sets_cookie, without_cookies


class ExchangeError(GatewayError):
    """The exchange through the gateway failed after the request was authorised and recorded.
    ``reason`` goes to the audit trail (the outcome) and the metrics."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class UpstreamError(ExchangeError):
    """The upstream failed: unreachable, TLS, an aborted or oversized response (502), or too
    slow (504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.code = "upstream_timeout" if status == 504 else "bad_gateway"
        self.public_message = (
            "the upstream did not answer in time"
            if status == 504
            else "the upstream is unavailable"
        )


class ClientFault(ExchangeError):
    """The client's side of the exchange failed: the rest of its request cannot be read, so
    the connection is closed after the answer."""

    close_connection = True


class BodyTooLarge(ClientFault):
    """The request body passed proxy.max_body_bytes: refused (413), the upstream request cut."""

    def __init__(self) -> None:
        super().__init__(413, "body_too_large")
        self.code = "too_large"
        self.public_message = "the request body is larger than this gateway accepts"


class ClientTooSlow(ClientFault):
    """The request body stopped arriving for longer than proxy.client_body_timeout_seconds."""

    def __init__(self) -> None:
        super().__init__(408, "client_body_timeout")
        self.code = "request_timeout"
        self.public_message = "the request body did not arrive in time"


class BodyName(ClientFault):
    """The request body names a parameter the gateway reads elsewhere — a method override
    (`_method`, decision 011) or the route's query subject parameter (decision 036): refused
    (400), the upstream request cut, so the upstream never has a complete request to act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(400, reason)
        self.code = "bad_request"
        self.public_message = "malformed request"


class ClientAborted(ClientFault):
    """The client went away before its request body was complete: its doing, not the upstream's."""

    def __init__(self) -> None:
        super().__init__(499, "client_aborted")
        self.code = "client_aborted"
        self.public_message = "the request body was cut short"


@dataclass(slots=True)
class Exchange:
    """What the forwarder measured; filled as the exchange proceeds."""

    status: int = 0
    response: web.StreamResponse | None = None  # set once headers went to the client
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float = 0.0
    # Why the request body stopped (too large, too slow): the client's fault, not the upstream's.
    client_failure: ClientFault | None = None
    # A bounded copy of the response body, for the subjects it names (route.response_subjects).
    copy: ResponseCopy | None = None


# A response of known length up to this size has its head sent with its body, in one write
# (one system call where aiohttp's StreamResponse makes two); larger or unknown-length bodies,
# a stream's first bytes among them, get their head at once.
SMALL_RESPONSE_BYTES = 64 * 1024


class _HeadWithBody(web.StreamResponse):
    """A StreamResponse whose head waits for the first body bytes, as `web.Response`'s does
    (aiohttp's class attribute; were it renamed, the head would go out at once: two writes)."""

    _send_headers_immediately = False


class _ReadingBody:
    """Around a read of the upstream's body: the time the exchange took so far, and a failure
    as the client and the trail see it (504 timed out, 502 broken off). A class, not a
    generator-based context manager: it is entered for every response."""

    __slots__ = ("_exchange", "_t0")

    def __init__(self, exchange: Exchange, t0: float) -> None:
        self._exchange, self._t0 = exchange, t0

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        self._exchange.upstream_seconds = time.perf_counter() - self._t0
        if isinstance(e, TimeoutError):
            raise UpstreamError(504, "upstream_timeout") from e
        if isinstance(e, aiohttp.ClientError):
            raise UpstreamError(502, "upstream_aborted") from e


def _refused(exchange: Exchange, reason: str) -> BodyName:
    """A name in the body the upstream must not read (decisions 011, 036): the client's fault."""
    exchange.client_failure = BodyName(reason)
    return exchange.client_failure


# The upstream gets the client's headers, not aiohttp's defaults for these.
SKIPPED_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")


@functools.lru_cache(maxsize=8)
def _skip_table(names: frozenset[str]) -> CIMultiDictProxy[None]:
    """The table aiohttp builds for every request, once; shared by every request, so read-only
    (aiohttp only reads it; a proxy makes a write anywhere fail instead of changing them all)."""
    return CIMultiDictProxy(CIMultiDict((name, None) for name in sorted(names)))


class UpstreamRequest(aiohttp.ClientRequest):
    """aiohttp's client request, its two header steps done with multidict's C methods instead of
    a Python loop over every header (decision 038): the same headers, in the same order, as
    aiohttp's own (tests/forwarding/test_upstream_request.py compares the bytes sent). Anything
    else — a Host of the caller's, skips not given as aiohttp's session passes them — goes to
    aiohttp's own steps."""

    def update_headers(self, headers: Any) -> None:
        # ``headers``: the session's own copy of the caller's (ClientSession._prepare_headers).
        if not isinstance(headers, CIMultiDict) or "Host" in headers:
            super().update_headers(headers)
            return
        host = self.url.host_port_subcomponent
        assert host is not None  # an absolute URL: the forwarder builds it
        out: CIMultiDict[str] = CIMultiDict()
        out["Host"] = host  # first, as aiohttp writes it
        out.extend(headers)
        self.headers = out

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        if not isinstance(skip_auto_headers, frozenset):
            super().update_auto_headers(skip_auto_headers)
            return
        skip = _skip_table(skip_auto_headers)
        self._skip_auto_headers = skip  # type: ignore[assignment]  # read-only: see _skip_table
        headers = self.headers
        for name, value in self.DEFAULT_HEADERS.items():
            if name not in headers and name not in skip:
                headers[name] = value
        if "User-Agent" not in headers and "User-Agent" not in skip:
            headers["User-Agent"] = aiohttp.http.SERVER_SOFTWARE


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        trusted: Sequence[IPNetwork],
        forward_authorization: bool,
        connect_timeout: float,
        read_timeout: float,
        max_body_bytes: int = 64 * 1024 * 1024,
        body_timeout: float = 30.0,
        max_response_bytes: int = 1024**3,
        total_timeout: float | None = None,
        ssl_contexts: Mapping[str, ssl.SSLContext] | None = None,
        gateway_cookies: frozenset[str] = frozenset(),
        upstream_urls: Sequence[str] = (),
    ) -> None:
        # SECURITY: the gateway's session and login cookies never reach an upstream, and an
        # upstream cannot set or clear them (THREAT_MODEL.md, browser sessions).
        self._own_cookies = gateway_cookies
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout
        self._max_response = max_response_bytes
        self._trusted = tuple(trusted)
        self._forward_authorization = forward_authorization
        # The forwarded request's options are the same every time: a session of its own over the
        # same connection pool holds them once (passed per request they cost ~4 µs of it).
        self._session = aiohttp.ClientSession(
            connector=session.connector,
            connector_owner=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=SKIPPED_AUTO_HEADERS,
            request_class=UpstreamRequest,
            timeout=aiohttp.ClientTimeout(
                total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
            ),
        )
        self._ssl = dict(ssl_contexts or {})  # by upstream name; others verify with system CAs
        self._addresses = AddressGuard(upstream_urls)  # decision 022
        self.session = session  # the WebSocket relay connects through the same pool

    async def forward(
        self,
        request: web.Request,
        route: Route,
        *,
        request_id: str,
        injected: dict[str, str],
        exchange: Exchange,
        before_last_chunk: Callable[[], Awaitable[None]],
        strip: frozenset[str] = frozenset(),
    ) -> web.StreamResponse:
        """``strip``: more header names never forwarded (proxy.strip_headers, normalised)."""
        headers = self.request_headers(request, route, injected, strip)
        # The raw path and query, byte for byte: what was authorised is what is forwarded.
        url = URL(route.upstream_url + request.raw_path, encoded=True)

        if (request.content_length or 0) > self._max_body:
            raise BodyTooLarge()  # declared too large: nothing is sent upstream

        # The query subject's name and the input names (decisions 036, 039): a body naming one
        # is cut; a body whose names are not read here is refused, nothing sent upstream.
        names = route.subject.body_names if route.subject is not None else ()
        if names and request.body_exists and not _readable(request):
            raise BodyName("subject_unreadable_body")

        data = self._body(request, exchange, names) if request.body_exists else None
        if (
            data is not None
            and request.version == aiohttp.HttpVersion11  # HTTP/1.0 has no interim responses
            and request.headers.get("Expect", "").lower() == "100-continue"
        ):
            # Only now, with the request authorised and audited, is the client asked for its
            # body (pipeline.expect_handler kept aiohttp from asking before any check).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        t0 = time.perf_counter()
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                ssl=self.ssl_for(route),
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise self._failure(e, exchange) from e
        try:
            if self._own_cookies and sets_cookie(
                upstream.headers.getall("Set-Cookie", ()), self._own_cookies
            ):
                raise UpstreamError(502, "upstream_set_gateway_cookie")
            if upstream.status == 101:  # no upgrade was asked for: never a tunnel (decision 024)
                raise UpstreamError(502, "upstream_unexpected_upgrade")
            head = self.response_head(request, route, upstream, request_id)
            return await self._relay(request, upstream, head, exchange, before_last_chunk, t0)
        finally:
            upstream.release()

    async def _body(
        self, request: web.Request, exchange: Exchange, subject_names: tuple[str, ...]
    ) -> AsyncIterator[bytes]:
        """The request body as it goes upstream, chunk by chunk: timed (slow clients), bounded,
        and cut before a chunk that completes a refused name (decisions 011, 036, 039)."""
        chunks = request.content.iter_any().__aiter__()
        names = BodyNames(
            _body_names(subject_names),
            strict="subject_unreadable_body" if subject_names else None,
        )
        held: bytes | None = None  # a chunk ending in a whole name: what follows decides
        while True:
            try:
                async with asyncio.timeout(self._body_timeout):  # slow-body clients
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                if held is not None:
                    found = names.finish()
                    if found is not None:  # the body ends with the name: never sent
                        raise _refused(exchange, found) from None
                    yield held
                return
            except TimeoutError:
                exchange.client_failure = ClientTooSlow()
                raise exchange.client_failure from None
            except Exception as e:  # the client hung up or broke the framing mid-body
                exchange.client_failure = ClientAborted()
                raise exchange.client_failure from e
            exchange.bytes_in += len(chunk)
            if exchange.bytes_in > self._max_body:  # chunked past the limit: cut it
                exchange.client_failure = BodyTooLarge()
                raise exchange.client_failure
            found = names.feed(chunk)
            if found is not None:  # the chunk that completes the name is never sent
                raise _refused(exchange, found)
            if held is not None:
                yield held
                held = None
            if names.ends_in_name():
                held = chunk
            else:
                yield chunk

    async def close(self) -> None:
        """Closes the forwarding session; the connection pool is the shared session's."""
        await self._session.close()

    def request_headers(
        self, request: web.Request, route: Route, injected: dict[str, str], strip: frozenset[str]
    ) -> CIMultiDict[str]:
        """The headers the upstream receives (gateway.forwarding.headers), the gateway's own
        cookies taken out."""
        headers = upstream_headers(
            request,
            trusted=self._trusted,
            forward_authorization=self._forward_authorization,
            injected=injected,
            strip=strip,
            keep_override="header" in route.method_override,
            preserve_host=route.host == "preserve",
        )
        if self._own_cookies and "Cookie" in headers:
            kept = [without_cookies(c, self._own_cookies) for c in headers.getall("Cookie")]
            del headers["Cookie"]
            for value in kept:
                if value is not None:
                    headers.add("Cookie", value)
        return headers

    def ssl_for(self, route: Route) -> ssl.SSLContext | bool:
        return self._ssl.get(route.upstream, True)

    @staticmethod
    def _failure(e: BaseException, exchange: Exchange) -> ExchangeError:
        """One place that maps a failed upstream request to what the client and audit see."""
        if exchange.client_failure is not None:
            return exchange.client_failure
        if isinstance(e, TimeoutError):  # aiohttp's ServerTimeoutError is one too
            return UpstreamError(504, "upstream_timeout")
        if isinstance(e, aiohttp.ClientSSLError):
            return UpstreamError(502, "upstream_tls_error")
        if isinstance(e, aiohttp.ClientConnectorError):
            return UpstreamError(502, "upstream_unreachable")
        return UpstreamError(502, "upstream_error")

    def response_head(
        self,
        request: web.Request,
        route: Route,
        upstream: aiohttp.ClientResponse,
        request_id: str,
    ) -> CIMultiDict[str]:
        """The response's headers for the client: hygiene, the upstream's internal address
        rewritten or refused (decision 022), `no-store` where the route holds personal data."""
        headers, addresses = response_headers(upstream, request_id)
        if addresses:
            try:
                self._addresses.rewrite(
                    headers, route.upstream_url, public_origin(request, self._trusted)
                )
            except InternalAddress:
                raise UpstreamError(502, "upstream_internal_address") from None
        if route.stores_nothing:  # a shared computer keeps no copy (decision 023)
            headers["Cache-Control"] = "no-store"
            headers.popall("Expires", None)
        return headers

    async def _relay_whole(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        exchange: Exchange,
        before_last_chunk: Callable[[], Awaitable[None]],
        t0: float,
    ) -> web.StreamResponse:
        """A small body of known length (SMALL_RESPONSE_BYTES), or none: read whole, its outcome
        recorded, then head and body sent in one write. Until then nothing has reached the client
        (``exchange.response`` is None), so a refusal can still be a whole answer."""
        with _ReadingBody(exchange, t0):
            body = await upstream.content.read()
        exchange.bytes_out = len(body)
        if exchange.copy is not None:
            exchange.copy.add(body)
        await before_last_chunk()
        resp = _HeadWithBody(status=upstream.status, reason=upstream.reason, headers=headers)
        await resp.prepare(request)
        exchange.response = resp
        await resp.write_eof(body)  # the head, the body and the end in one write
        return resp

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        exchange: Exchange,
        before_last_chunk: Callable[[], Awaitable[None]],
        t0: float,
    ) -> web.StreamResponse:
        exchange.status = upstream.status
        length = upstream.content_length  # parsed from the header at each use: once here
        # A head without a body (HEAD, 204, 304) is the whole response: its outcome is recorded
        # before it is sent, as for a small body.
        bodiless = request.method == "HEAD" or upstream.status in (204, 304)
        if length is not None and length > self._max_response and not bodiless:
            raise UpstreamError(502, "upstream_response_too_large")
        if bodiless or (length is not None and length <= SMALL_RESPONSE_BYTES):
            return await self._relay_whole(
                request, upstream, headers, exchange, before_last_chunk, t0
            )
        resp = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=headers,
        )
        if length is None:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        exchange.response = resp
        # One chunk of look-ahead: the last chunk is held until the outcome is on record, so a
        # client never has a whole response whose outcome could still be lost.
        held: bytes | None = None
        with _ReadingBody(exchange, t0):
            async for chunk in upstream.content.iter_any():
                if held is not None:
                    await resp.write(held)
                    exchange.bytes_out += len(held)
                if exchange.bytes_out + len(chunk) > self._max_response:
                    raise UpstreamError(502, "upstream_response_too_large")
                held = chunk
                if exchange.copy is not None:
                    exchange.copy.add(chunk)
        if held is not None:
            exchange.bytes_out += len(held)
        await before_last_chunk()
        if held is not None:
            await resp.write(held)
        await resp.write_eof()
        return resp


# What a route with a query subject takes as a body: what the scanner reads names in (decision
# 036). An XML, a YAML or an encoded-charset body could carry the subject unseen.
_READABLE_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "application/json"}
)


def _readable(request: web.Request) -> bool:
    if "Content-Encoding" in request.headers:
        return False
    kind = request.content_type  # aiohttp's reading of Content-Type, in lower case
    if request.headers.get("Content-Type") and not (
        kind in _READABLE_TYPES or kind.endswith("+json")
    ):
        return False
    return (request.charset or "utf-8").lower() in ("utf-8", "us-ascii", "ascii")


def _body_names(subject_names: tuple[str, ...]) -> dict[str, str]:
    """The parameter names a body may not carry, and the refusal's reason; ``subject_names``:
    the route's query subject parameter and input names."""
    names = {OVERRIDE_PARAM: "method_override_in_body"}
    for name in subject_names:  # 6.1.1, 6.5: one reading (decisions 036, 039)
        names[name] = "subject_in_body"
    return names
