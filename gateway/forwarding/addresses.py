"""The upstream's internal address never reaches the browser (decision 022).

Contract: ``AddressGuard.rewrite(headers, upstream_url, public)`` edits a response's headers in
place: a `Location`, `Content-Location` or `Refresh` URL naming the route's own upstream (its host
and port) is rewritten to the public origin the client used; one naming any other internal
address — another upstream's host, the upstream's host on another port, `localhost`, an IP
literal that is not a global address — raises ``InternalAddress`` (the forwarder answers 502 and
records it); a `Set-Cookie` whose `Domain` names an internal address loses that attribute, so the
cookie is the public host's alone. URLs naming the public origin or an outside site are kept.

SECURITY: the URL is read the way a browser's URL parser (WHATWG) reads it, not the way a
tolerant server does: tabs and newlines removed, leading controls and spaces stripped, `\\` read
as `/` in http(s) URLs, any number of slashes after `http:`, `//host` and `/\\host` as another
host, user info skipped, percent-encoded host names decoded, case and a trailing dot ignored,
IPv4 in its numeric forms (`2130706433`, `0x7f.1`) and IPv6 literals (`[::1]`, mapped IPv4)
compared as addresses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDict

from gateway.core.remember import remembered

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
URL_HEADERS = ("Location", "Content-Location")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CONTROLS = "".join(chr(c) for c in range(0x21))  # C0 controls and space, stripped at the ends
MAX_HOST_CHARS = 255  # a DNS name's longest: a longer host is worked out each time, never kept


class InternalAddress(Exception):
    """A response header names an internal address the gateway cannot rewrite: refused."""


@dataclass(frozen=True, slots=True)
class Origin:
    """A scheme, a normalised host and a port."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        default = DEFAULT_PORTS.get(self.scheme)
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


def parse_origin(url_or_authority: str, scheme: str | None = None) -> Origin | None:
    """The origin of an absolute URL, or of a bare `host[:port]` given its ``scheme``: for the
    Host of every request, so remembered as ``normalise_host`` remembers hosts."""
    if scheme is not None:
        return _remembered_origin(url_or_authority, scheme)
    parts = urlsplit(url_or_authority)  # a URL (an upstream's, a response's Location): not kept
    return _origin(parts.netloc, parts.scheme.lower())


def _origin(authority: str, scheme: str) -> Origin | None:
    found = _host_port(authority, scheme)
    return Origin(scheme, found[0], found[1]) if found is not None else None


_remembered_origin = remembered(longest=MAX_HOST_CHARS)(_origin)


def public_hosts(entries: frozenset[str]) -> frozenset[str] | None:
    """proxy.public_hosts as ``host`` (any port) or ``host:port``, hosts normalised; None: any."""
    out = set()
    for entry in entries:
        explicit = "]:" in entry if entry.startswith("[") else ":" in entry
        origin = parse_origin(entry, "http")
        if origin is not None:
            out.add(f"{origin.host}:{origin.port}" if explicit else origin.host)
    return frozenset(out) if entries else None


@remembered(longest=MAX_HOST_CHARS)
def normalise_host(raw: str) -> str | None:
    """A host name as a browser compares it, or None if a browser would not accept it.

    Asked several times a request (the Host check, X-Forwarded-*, response addresses) for a
    handful of distinct hosts: remembered, for names as long as a DNS name can be (a longer
    one, sent to fill the memory, is worked out each time)."""
    try:
        host = unquote(raw, errors="strict").lower()
    except UnicodeDecodeError:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    if host.endswith("."):
        host = host[:-1]
    if not host or any(c in host for c in " #%/:<>?@[\\]^|"):
        return None
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    try:
        v4 = _whatwg_ipv4(host)
    except ValueError:
        return None
    return v4 if v4 is not None else host


_NUMBER = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
_HEX = re.compile(r"0[xX][0-9A-Fa-f]*")
_OCTAL = re.compile(r"0[0-7]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _whatwg_ipv4(host: str) -> str | None:
    """WHATWG's IPv4 parser: None when the last label is not a number (a name); ValueError when
    it is but the whole is no IPv4 address (a browser refuses such a host). 1-4 parts, each
    decimal, 0x-hex or 0-octal; the last fills the rest."""
    parts = host.split(".")
    if not _NUMBER.fullmatch(parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError("too many parts")
    numbers = []
    for part in parts:
        # Digits only: Python's int() would also take signs, spaces and underscores.
        if _HEX.fullmatch(part):
            numbers.append(int(part[2:] or "0", 16))
        elif _OCTAL.fullmatch(part):
            numbers.append(int(part, 8))
        elif _DECIMAL.fullmatch(part):
            numbers.append(int(part, 10))
        else:
            raise ValueError("not a number")
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError("out of range")
    value = last
    for i, n in enumerate(head):
        value += n * 256 ** (3 - i)
    return str(ipaddress.IPv4Address(value))


def _host_port(authority: str, scheme: str) -> tuple[str, int] | None:
    authority = authority.rpartition("@")[2]  # user info is not the host
    if authority.startswith("["):
        host, _, rest = authority.partition("]")
        host += "]"
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = authority.partition(":")
    norm = normalise_host(host)
    if norm is None:
        return None
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        port = DEFAULT_PORTS.get(scheme, 0)
    return norm, port


def _is_internal_literal(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global


class AddressGuard:
    """Knows every upstream's address; rewrites or refuses response headers naming one."""

    def __init__(self, upstream_urls: Iterable[str]) -> None:
        self._origins = {u: parse_origin(u) for u in upstream_urls}
        self._hosts = frozenset(o.host for o in self._origins.values() if o is not None)

    def internal(self, host: str) -> bool:
        return host in self._hosts or _is_internal_literal(host)

    def rewrite(self, headers: CIMultiDict[str], upstream_url: str, public: Origin) -> None:
        """Edit ``headers`` in place (module docstring); InternalAddress when one is refused."""
        upstream = (
            self._origins[upstream_url]
            if upstream_url in self._origins
            else parse_origin(upstream_url)
        )
        for name in URL_HEADERS:
            values = headers.getall(name, ())
            if values:
                del headers[name]
                for value in values:
                    headers.add(name, self.url(value, upstream, public))
        refresh = headers.getall("Refresh", ())
        if refresh:
            del headers["Refresh"]
            for value in refresh:
                kept = self._refresh(value, upstream, public)
                if kept is not None:
                    headers.add("Refresh", kept)
        cookies = headers.getall("Set-Cookie", ())
        if cookies:
            del headers["Set-Cookie"]
            for value in cookies:
                headers.add("Set-Cookie", self.cookie(value, upstream, public))

    def url(self, value: str, upstream: Origin | None, public: Origin) -> str:
        """``value`` as the browser should see it; InternalAddress if it must be refused."""
        text = value.strip(_CONTROLS).replace("\t", "").replace("\n", "").replace("\r", "")
        m = _SCHEME.match(text)
        if m is not None:
            scheme = m.group(1).lower()
            if scheme not in DEFAULT_PORTS:
                return value  # mailto:, data: … name no host of ours
            rest = text[m.end() :].replace("\\", "/")
            after = rest.lstrip("/")
        else:
            scheme = public.scheme
            rest = text.replace("\\", "/")
            if not rest.startswith("//"):
                return value  # a path: resolved against the public URL by the browser
            after = rest.lstrip("/")
        end = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
        authority, tail = after[:end], after[end:]
        found = _host_port(authority, scheme)
        if found is None:
            return value  # no host a browser would go to
        host, port = found
        if (host, port) == (public.host, public.port):
            return value
        if upstream is not None and (host, port) == (upstream.host, upstream.port):
            return f"{public}{tail if tail.startswith('/') else '/' + tail}"
        if self.internal(host):
            raise InternalAddress(host)
        return value

    def _refresh(self, value: str, upstream: Origin | None, public: Origin) -> str | None:
        """HTML's declarative refresh (`N`, `N; url=U`, `N, 'U'`); None: a browser ignores it."""
        m = re.match(r"^[ \t\n\f\r]*([0-9.]+)[ \t\n\f\r]*[;,]?[ \t\n\f\r]*(.*)$", value, re.S)
        if m is None or not m.group(1)[0].isdigit():
            return None
        delay, target = m.group(1), m.group(2)
        um = re.match(r"^[Uu][Rr][Ll][ \t\n\f\r]*=[ \t\n\f\r]*(.*)$", target, re.S)
        if um is not None:
            target = um.group(1)
        if target[:1] in ("'", '"'):
            target = target[1:].split(target[0], 1)[0]
        if not target:
            return delay
        return f"{delay}; url={self.url(target, upstream, public)}"

    def cookie(self, value: str, upstream: Origin | None, public: Origin) -> str:
        """A Set-Cookie value without a Domain attribute that names an internal address."""
        name_value, *attrs = value.split(";")
        kept = []
        for attr in attrs:
            key, _, raw = attr.partition("=")
            if key.strip().lower() == "domain":
                host = normalise_host(raw.strip().strip('"').lstrip("."))
                ours = upstream is not None and host == upstream.host
                if host is not None and host != public.host and (ours or self.internal(host)):
                    continue  # host-only: the public host's cookie
            kept.append(attr)
        return ";".join([name_value, *kept])
