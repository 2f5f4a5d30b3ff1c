"""Forwarding to upstreams: header hygiene, X-Forwarded-*, streaming both ways, 502/504.

Contract: ``Forwarder.forward`` streams the request to the route's upstream and the response back
without holding a whole body; it calls ``before_last_chunk(outcome)`` once the response's size is
known and before the last chunk is written, so the outcome is on record before the client has
all of the response. Upstream failures raise UpstreamError (status 502 or 504).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import IPNetwork, Route
from gateway.cookies import sets_cookie, without_cookies
from gateway.errors import BadRequest, GatewayError
from gateway.method_override import OVERRIDE_HEADERS, BodyOverrideScanner
from gateway.response_subjects import ResponseCopy

# RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies still meet.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
FORWARDING = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
)
INJECTED_PREFIX = "x-pd-"
# X-Forwarded-* is the gateway's to write: it sets For, Proto and Host itself (from trusted
# proxies it extends them); every other one a client sends (Prefix, Path, User, Client-Cert, …)
# would tell the upstream about a URL, user or certificate nobody checked.
FORWARDED_PREFIX = "x-forwarded-"
# Headers that make an upstream act on another URL, file, host, client or user than the one
# authorised and recorded: URL rewrites (IIS, Symfony, Zend), X-Accel/Sendfile, identities that
# auth-proxy modes trust (Remote-User & co.), client addresses that frameworks read, and `Proxy`
# (httpoxy: CGI turns it into HTTP_PROXY). Never forwarded; proxy.strip_headers adds more.
STRIPPED = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-forwarded-prefix",
        "x-forwarded-path",
        "x-forwarded-uri",
        "x-forwarded-server",
        "x-forwarded-port",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-scheme",
        "front-end-https",
        "x-accel-redirect",
        "x-accel-buffering",
        "x-sendfile",
        "x-lighttpd-send-file",
        "remote-user",
        "x-remote-user",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
        "x-auth-request-access-token",
        "x-remote-group",
        "x-ms-client-principal",
        "x-ms-client-principal-name",
        "x-ms-client-principal-id",
        "x-ssl-client-cert",
        "x-envoy-original-path",
        "x-envoy-original-url",
        "x-client-cert",
        "ssl-client-cert",
        "x-ssl-client-s-dn",
        "proxy",
        "x-original-host",
        "x-host",
        "x-http-host-override",
        "x-forwarded-host-override",
        "x-original-forwarded-for",
        "x-proxyuser-ip",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
    }
)
# Every name the gateway owns, strips or rewrites. A client sending one of them spelt with `_`
# for `-` is refused (decision 011): CGI/WSGI servers merge `X_PD_User` with `X-PD-User`.
OWNED = (
    HOP_BY_HOP
    | FORWARDING
    | STRIPPED
    | OVERRIDE_HEADERS
    | {"host", "x-request-id", "expect", "authorization", "cookie", "content-length"}
    | {"content-type", "content-encoding"}
)


def header_key(name: str) -> str:
    """A header name as CGI-style servers read it: case and `_` versus `-` do not count."""
    return name.lower().replace("_", "-")


def owned(key: str, strip: frozenset[str] = frozenset()) -> bool:
    return (
        key in OWNED
        or key in strip
        or key.startswith(INJECTED_PREFIX)
        or key.startswith(FORWARDED_PREFIX)
    )


# RFC 9110 §7.2 / RFC 3986 §3.2.2: host [":" port]. A reg-name here is unreserved characters only
# (pct-encoded and sub-delims are legal but no real host name needs them); IP literals are checked
# by ipaddress.
_REG_NAME_OR_IPV4 = re.compile(r"^[A-Za-z0-9._~-]+$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def valid_host(value: str) -> bool:
    host, port = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return not rest or (bool(_PORT.match(port)) and int(port) <= 65535)
    if ":" in value:
        host, _, port = value.rpartition(":")
        if not _PORT.match(port) or int(port) > 65535:
            return False
    return bool(_REG_NAME_OR_IPV4.match(host))


def check_request_headers(
    headers: CIMultiDictProxy[str], strip: frozenset[str] = frozenset()
) -> None:
    """BadRequest unless the request's headers mean one thing to every upstream: an owned name
    spelt with `_` (`header_spoofing`), a `Host` outside RFC 9110 syntax (`bad_host`)."""
    for name in headers:
        if "_" in name and owned(header_key(name), strip):
            raise BadRequest("header_spoofing")
    host = headers.get("Host")
    if host is not None and not valid_host(host):
        raise BadRequest("bad_host")


class UpstreamError(GatewayError):
    """The exchange through the gateway failed: the upstream (502, 504) or, for the subclasses
    below, the client's side of it (413, 408). ``reason`` goes to the audit trail and metrics."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = "upstream_timeout" if status == 504 else "bad_gateway"
        self.public_message = (
            "the upstream did not answer in time"
            if status == 504
            else "the upstream is unavailable"
        )


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Names a `Connection` header lists: hop-by-hop for this connection only (RFC 9110 §7.6.1)."""
    names: set[str] = set()
    for value in headers.getall("Connection", ()):
        names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names


def _strip(lower: str, listed: set[str]) -> bool:
    return lower in HOP_BY_HOP or lower in listed


def is_trusted(addr: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, or — behind trusted proxies — the nearest untrusted hop."""
    peer = request.remote or ""
    if not trusted or not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")]
    for hop in reversed(hops):
        if hop and not is_trusted(hop, trusted):
            return hop
    return peer


def upstream_headers(
    request: web.BaseRequest,
    *,
    trusted: Sequence[IPNetwork],
    forward_authorization: bool,
    injected: dict[str, str],
    strip: frozenset[str] = frozenset(),
    keep_override: bool = False,
) -> CIMultiDict[str]:
    """Request headers for the upstream.

    SECURITY: every inbound `X-PD-*` and `X-Request-Id` is dropped by normalised name (case, and
    `_` read as `-`) before the gateway injects its own, so no client can assert an identity the
    upstream would trust; so are STRIPPED, ``strip`` and, unless ``keep_override`` (the route
    declares its upstream honours them), method-override headers. `X-Forwarded-*` from a peer
    outside ``trusted`` are replaced, not extended.
    """
    listed = {header_key(n) for n in connection_listed(request.headers)}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = header_key(name)
        if (
            _strip(lower, listed)
            or lower.startswith(INJECTED_PREFIX)
            or lower.startswith(FORWARDED_PREFIX)
            or lower in FORWARDING
            or lower in STRIPPED
            or lower in strip
            or (lower in OVERRIDE_HEADERS and not keep_override)
            or lower in ("host", "x-request-id", "expect")  # the gateway answers Expect itself
            or (lower == "authorization" and not forward_authorization)
        ):
            continue
        out.add(name, value)
    peer = request.remote or ""
    from_trusted = bool(trusted) and is_trusted(peer, trusted)
    prior_for = ", ".join(request.headers.getall("X-Forwarded-For", ())) if from_trusted else ""
    out["X-Forwarded-For"] = f"{prior_for}, {peer}" if prior_for else peer
    out["X-Forwarded-Proto"] = (
        request.headers.get("X-Forwarded-Proto", request.scheme) if from_trusted else request.scheme
    )
    out["X-Forwarded-Host"] = (
        request.headers.get("X-Forwarded-Host", request.host) if from_trusted else request.host
    )
    out.update(injected)
    return out


def response_headers(upstream: aiohttp.ClientResponse, request_id: str) -> CIMultiDict[str]:
    listed = connection_listed(upstream.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lower = name.lower()
        if _strip(lower, listed) or lower == "x-request-id":
            continue
        out.add(name, value)
    out["X-Request-Id"] = request_id
    return out


class BodyTooLarge(UpstreamError):
    """The request body passed proxy.max_body_bytes: refused (413), the upstream request cut."""

    close_connection = True

    def __init__(self) -> None:
        super().__init__(413, "body_too_large")
        self.code = "too_large"
        self.public_message = "the request body is larger than this gateway accepts"


class ClientTooSlow(UpstreamError):
    """The request body stopped arriving for longer than proxy.client_body_timeout_seconds."""

    close_connection = True

    def __init__(self) -> None:
        super().__init__(408, "client_body_timeout")
        self.code = "request_timeout"
        self.public_message = "the request body did not arrive in time"


class BodyOverride(UpstreamError):
    """The request body names a method override (`_method`): refused (400), the upstream
    request cut, so the upstream never has a complete request to act on (decision 011)."""

    close_connection = True

    def __init__(self) -> None:
        super().__init__(400, "method_override_in_body")
        self.code = "bad_request"
        self.public_message = "malformed request"


class ClientAborted(UpstreamError):
    """The client went away before its request body was complete: its doing, not the upstream's."""

    close_connection = True

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
    client_failure: UpstreamError | None = None
    # A bounded copy of the response body, for the subjects it names (route.response_subjects).
    copy: ResponseCopy | None = None


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
    ) -> None:
        # SECURITY: the gateway's session and login cookies never reach an upstream, and an
        # upstream cannot set or clear them (THREAT_MODEL.md, browser sessions).
        self._own_cookies = gateway_cookies
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout
        self._max_response = max_response_bytes
        self._session = session
        self._trusted = tuple(trusted)
        self._forward_authorization = forward_authorization
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._ssl = dict(ssl_contexts or {})  # by upstream name; others verify with system CAs

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
        headers = upstream_headers(
            request,
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
        # The raw path and query, byte for byte: what was authorised is what is forwarded.
        url = URL(route.upstream_url + request.raw_path, encoded=True)

        if (request.content_length or 0) > self._max_body:
            raise BodyTooLarge()  # declared too large: nothing is sent upstream

        async def body() -> AsyncIterator[bytes]:
            chunks = request.content.iter_any().__aiter__()
            overrides = BodyOverrideScanner()
            while True:
                try:
                    async with asyncio.timeout(self._body_timeout):  # slow-body clients
                        chunk = await anext(chunks)
                except StopAsyncIteration:
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
                if overrides.feed(chunk):  # the chunk that completes `_method` is never sent
                    exchange.client_failure = BodyOverride()
                    raise exchange.client_failure
                yield chunk

        data = body() if request.body_exists else None
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
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                ssl=self._ssl.get(route.upstream, True),
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise self._failure(e, exchange) from e
        try:
            if self._own_cookies and sets_cookie(
                upstream.headers.getall("Set-Cookie", ()), self._own_cookies
            ):
                raise UpstreamError(502, "upstream_set_gateway_cookie")
            return await self._relay(request, upstream, request_id, exchange, before_last_chunk, t0)
        finally:
            upstream.release()

    @staticmethod
    def _failure(e: BaseException, exchange: Exchange) -> UpstreamError:
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

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        request_id: str,
        exchange: Exchange,
        before_last_chunk: Callable[[], Awaitable[None]],
        t0: float,
    ) -> web.StreamResponse:
        exchange.status = upstream.status
        if upstream.content_length is not None and upstream.content_length > self._max_response:
            raise UpstreamError(502, "upstream_response_too_large")
        resp = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream, request_id),
        )
        if (
            upstream.content_length is None
            and request.method != "HEAD"
            and upstream.status not in (204, 304)
        ):
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        exchange.response = resp
        # One chunk of look-ahead: the last chunk is held until the outcome is on record, so a
        # client never has a whole response whose outcome could still be lost.
        held: bytes | None = None
        try:
            async for chunk in upstream.content.iter_any():
                if held is not None:
                    await resp.write(held)
                    exchange.bytes_out += len(held)
                if exchange.bytes_out + len(chunk) > self._max_response:
                    exchange.upstream_seconds = time.perf_counter() - t0
                    raise UpstreamError(502, "upstream_response_too_large")
                held = chunk
                if exchange.copy is not None:
                    exchange.copy.add(chunk)
        except TimeoutError as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise UpstreamError(504, "upstream_timeout") from e
        except aiohttp.ClientError as e:
            exchange.upstream_seconds = time.perf_counter() - t0
            raise UpstreamError(502, "upstream_aborted") from e
        exchange.upstream_seconds = time.perf_counter() - t0
        if held is not None:
            exchange.bytes_out += len(held)
        await before_last_chunk()
        if held is not None:
            await resp.write(held)
        await resp.write_eof()
        return resp
