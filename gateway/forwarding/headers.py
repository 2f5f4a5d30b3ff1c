"""Header hygiene: what crosses the gateway in each direction, and who the client is.

SECURITY (THREAT_MODEL.md "Forwarding equivalence", decision 011): every header the gateway owns,
strips or rewrites is known by its normalised name (case, and `_`, `.` or any other character
but a letter or digit read as `-`, as CGI-style servers read it); a request spelling one so is
refused; inbound identity, rewrite and
`X-Forwarded-*` headers never reach an upstream; the gateway writes its own. Hop-by-hop headers
(RFC 9110 §7.6.1) are dropped both ways.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.model import IPNetwork
from gateway.config.vocabulary import ODD_HEADER_NAME, header_key
from gateway.core.errors import BadRequest
from gateway.core.remember import remembered
from gateway.forwarding.addresses import MAX_HOST_CHARS, Origin, normalise_host, parse_origin
from gateway.forwarding.method_override import OVERRIDE_HEADERS

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
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
    }
)
INJECTED_PREFIX = "x-pd-"
# X-Forwarded-* is the gateway's to write: it sets For, Proto, Host and Port itself (from trusted
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
_REG_NAME_OR_IPV4 = re.compile(r"^[A-Za-z0-9._~-]+\Z")
_PORT = re.compile(r"^[0-9]{1,5}\Z")


@remembered(longest=MAX_HOST_CHARS + len(":65535"))
def valid_host(value: str) -> bool:
    """Whether ``value`` is a Host a browser could have sent (asked for every request)."""
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
    # …and a name a browser could have used: not `.`, not a numeric name that is no IPv4.
    return bool(_REG_NAME_OR_IPV4.match(host)) and normalise_host(host) is not None


def check_request_headers(
    headers: CIMultiDictProxy[str], strip: frozenset[str] = frozenset()
) -> None:
    """BadRequest unless the request's headers mean one thing to every upstream: an owned name
    spelt with another separator than `-` (`header_spoofing`: `X_PD_User`, `X.PD.User`), a
    second `Authorization` (`duplicate_header`), a `Host` outside RFC 9110 syntax (`bad_host`).
    A second Host or Content-Type never gets here: aiohttp's parser refuses RFC 9110's
    singletons it knows."""
    if ODD_HEADER_NAME.search("".join(headers)):  # one search for the usual request: none has one
        for name in headers:
            if ODD_HEADER_NAME.search(name) and owned(header_key(name), strip):
                raise BadRequest("header_spoofing")
    if len(headers.getall("Authorization", ())) > 1:
        # One credential (RFC 9110 §11.6.2): the token verified is the first; an upstream given
        # both (proxy.forward_authorization) may act as whoever the second names.
        raise BadRequest("duplicate_header")
    host = headers.get("Host")
    if host is not None and not valid_host(host):
        raise BadRequest("bad_host")


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Names a `Connection` header lists, normalised (case, `_` read as `-`): hop-by-hop for this
    connection only (RFC 9110 §7.6.1)."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    if len(values) == 1:  # `keep-alive`, `close`, …
        return _listed(values[0])
    return frozenset(name for value in values for name in _listed(value))


@remembered(longest=255, maxsize=256)  # longer than any list a server sends
def _listed(value: str) -> frozenset[str]:
    return frozenset(header_key(token.strip()) for token in value.split(",") if token.strip())


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


def public_origin(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> Origin:
    """The scheme, host and port the client used: the request's own, or — from a peer in
    ``trusted`` — its `X-Forwarded-Proto/Host/Port` where they are well formed (decision 022)."""
    scheme, host = request.scheme, request.host
    port = ""
    if trusted and is_trusted(request.remote or "", trusted):
        fproto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        fhost = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        fport = request.headers.get("X-Forwarded-Port", "").split(",")[0].strip()
        if fproto in ("http", "https"):
            scheme = fproto
        if fhost and valid_host(fhost):
            host = fhost
        if _PORT.match(fport) and 0 < int(fport) <= 65535:
            port = fport
    origin = parse_origin(host, scheme)
    if origin is None:  # check_request_headers refused such a Host before anything was forwarded
        raise BadRequest("bad_host")
    explicit = "]:" in host if host.startswith("[") else ":" in host
    if port and not explicit:
        origin = Origin(scheme, origin.host, int(port))
    return origin


def upstream_headers(
    request: web.BaseRequest,
    *,
    trusted: Sequence[IPNetwork],
    forward_authorization: bool,
    injected: dict[str, str],
    strip: frozenset[str] = frozenset(),
    keep_override: bool = False,
    preserve_host: bool = False,
) -> CIMultiDict[str]:
    """Request headers for the upstream.

    SECURITY: every inbound `X-PD-*` and `X-Request-Id` is dropped by normalised name (case, and
    `_`, `.` or another separator read as `-`: ``header_key``) before the gateway injects its
    own, so no client can assert an identity the upstream would trust; so are STRIPPED,
    ``strip`` and, unless ``keep_override`` (the route declares its upstream honours them),
    method-override headers. `X-Forwarded-*` from a peer outside ``trusted`` are replaced, not
    extended. ``preserve_host``: the upstream receives the public Host (``public_origin``)
    instead of its own (decision 022).
    """
    listed = connection_listed(request.headers)
    dropped = _dropped(strip, keep_override, forward_authorization)
    out: CIMultiDict[str] = CIMultiDict()
    key = header_key if ODD_HEADER_NAME.search("".join(request.headers)) else str.lower
    for name, value in request.headers.items():
        # One pass, one normalised name, one set look-up for everything a configuration drops.
        lower = key(name)
        if lower in dropped or lower in listed or lower.startswith(_GATEWAY_PREFIXES):
            continue
        out.add(name, value)
    # Every X-Forwarded-* name, X-Request-Id and X-PD-* name was dropped above: the gateway's
    # own are added, not set (a set looks for an earlier one to replace).
    peer = request.remote or ""
    if trusted and is_trusted(peer, trusted):
        prior_for = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        public = public_origin(request, trusted)
        out.add("X-Forwarded-For", f"{prior_for}, {peer}" if prior_for else peer)
        out.extend(_forwarded(public.scheme, public.authority, public.port))
    else:  # the usual peer: the same four for every request of its connection
        out.extend(_from_peer(request.host, request.scheme, peer))
    if preserve_host:  # the public authority, as X-Forwarded-Host names it
        out.add("Host", out["X-Forwarded-Host"])
    out.extend(injected)
    return out


def _forwarded(scheme: str, authority: str, port: int) -> tuple[tuple[str, str], ...]:
    return (
        ("X-Forwarded-Proto", scheme),
        ("X-Forwarded-Host", authority),
        ("X-Forwarded-Port", str(port)),
    )


@remembered(longest=MAX_HOST_CHARS + len(":65535"))
def _from_peer(host: str, scheme: str, peer: str) -> tuple[tuple[str, str], ...]:
    """X-Forwarded-* for a peer outside proxy.trusted_proxies: the client is the peer, the
    origin is the request's own (``public_origin`` without trusted proxies)."""
    origin = parse_origin(host, scheme)
    if origin is None:  # check_request_headers refused such a Host before anything was forwarded
        raise BadRequest("bad_host")
    return (("X-Forwarded-For", peer), *_forwarded(origin.scheme, origin.authority, origin.port))


def response_headers(
    upstream: aiohttp.ClientResponse, request_id: str
) -> tuple[CIMultiDict[str], bool]:
    """The response's headers for the client, and whether one of them may name an address
    (Location, Content-Location, Refresh, Set-Cookie: gateway.forwarding.addresses)."""
    headers = upstream.headers
    listed = connection_listed(headers)
    if listed and ODD_HEADER_NAME.search("".join(headers)):
        # A name spelt with `_` or `.` may be one a `Connection` header lists: normalised one by
        # one (header_key). No usual response has one.
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in headers.items():
            lower = name.lower()
            if lower not in _RESPONSE_DROPPED and header_key(lower) not in listed:
                out.add(name, value)
    else:
        # The usual response: copied whole, then the names to drop taken out — multidict's
        # set operations on names ignore case, as HTTP does, and cost a fraction of a loop.
        out = CIMultiDict(headers)
        for name in headers.keys() & _response_dropped(listed):
            out.popall(name)
    out["X-Request-Id"] = request_id
    return out, not headers.keys().isdisjoint(ADDRESS_HEADERS)


_RESPONSE_DROPPED = HOP_BY_HOP | {"x-request-id"}


@functools.lru_cache(maxsize=256)  # a few `Connection` lists per upstream
def _response_dropped(listed: frozenset[str]) -> frozenset[str]:
    return _RESPONSE_DROPPED | listed


ADDRESS_HEADERS = frozenset({"location", "content-location", "refresh", "set-cookie"})
_GATEWAY_PREFIXES = (INJECTED_PREFIX, FORWARDED_PREFIX)


@functools.lru_cache(maxsize=64)
def _dropped(
    strip: frozenset[str], keep_override: bool, forward_authorization: bool
) -> frozenset[str]:
    """Every request header name (normalised) never forwarded under one configuration: a few
    configurations per gateway (the strip list and two per-route switches), so computed once."""
    return (
        HOP_BY_HOP
        | FORWARDING
        | STRIPPED
        | strip
        | (frozenset() if keep_override else OVERRIDE_HEADERS)
        | {"host", "x-request-id", "expect"}  # the gateway answers Expect itself
        | (frozenset() if forward_authorization else {"authorization"})
    )
