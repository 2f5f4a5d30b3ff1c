"""The `console` section: the DPO's and investigators' pages in a browser (decision 025), on a
listener and origin of their own (decision 035). Absent: no console. It needs browser login
(`oidc`) and an audit store to read."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from urllib.parse import urlsplit

from gateway.config.listen import parse_listen
from gateway.config.model import (
    CONSOLE_PORT,
    ConsoleConfig,
    Listen,
    OidcConfig,
    StoreConfig,
    origin_with_port,
)
from gateway.config.reader import Section, at_least
from gateway.config.vocabulary import GATEWAY_PATH_PREFIX

D = ConsoleConfig  # the defaults
# The login machinery's own pages under the prefix (gateway.web.browser): not the console's.
_TAKEN = ("login", "callback", "logout", "logged-out")
_PATH = re.compile(r"^/_pdgw/([a-z0-9][a-z0-9-]*/)+\Z")


def parse_console(
    top: Section, oidc: OidcConfig | None, store: StoreConfig | None, proxy: Listen
) -> ConsoleConfig | None:
    c = top.optional("console")
    if c is None:
        return None
    problems = c.problems
    path = c.get("path", str, D.path)
    if not _PATH.match(path):
        problems.add(
            c.key("path"),
            f"must be a path under {GATEWAY_PATH_PREFIX} of lower-case letters, digits and '-', "
            "ending with '/', like /_pdgw/console/",
        )
        path = D.path
    elif path[len(GATEWAY_PATH_PREFIX) :].split("/")[0] in _TAKEN:
        problems.add(c.key("path"), "is a page of the browser login; choose another")
    tz = c.get("timezone", str, D.timezone)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add(c.key("timezone"), f"unknown time zone {tz!r}")
        tz = D.timezone
    rows = c.get("page_rows", int, D.page_rows, at_least(10))
    if rows is not None and rows > 1000:
        problems.add(c.key("page_rows"), "must be at most 1000")
    if oidc is None:
        problems.add(c.path, "needs the oidc section: the console uses the gateway's login")
    if store is None:
        problems.add(c.path, "needs a store section: the console reads the audit trail there")
    listen = parse_listen(c.section("listen", required=False), CONSOLE_PORT, ())
    origin = c.get("origin", str, D.origin)
    if oidc is not None:
        origin = _own_origin(c, oidc, origin, listen, proxy)
    cfg = ConsoleConfig(
        path=path,
        timezone=tz,
        page_rows=min(rows or D.page_rows, 1000),
        listen=listen,
        origin=origin,
    )
    c.finish()
    return cfg


def _own_origin(c: Section, oidc: OidcConfig, origin: str, listen: Listen, proxy: Listen) -> str:
    """The console's origin must be its own (decision 035): another port than the proxied apps',
    on the host the login's cookies are set for (they are host-only: a port does not matter to
    them, a host does), and one browsers send `Sec-Fetch-*` to (https, or http on loopback)."""
    login = urlsplit(oidc.origin)
    if listen.port == proxy.port and listen.port != 0:
        c.problems.add(
            c.key("listen.port"),
            "is the proxy listener's port: the console needs a port of its own (decision 035)",
        )
        return ""
    if origin:
        parts = urlsplit(origin)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port == 0
            or parts.path
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            c.problems.add(c.key("origin"), "must be an origin: scheme://host:port, nothing more")
            return ""
        if (parts.scheme, parts.hostname) != (login.scheme, login.hostname):
            c.problems.add(
                c.key("origin"),
                f"must be on the login's scheme and host ({login.scheme}://{login.hostname}, "
                "from oidc.redirect_uri): the session cookie is set for that host only",
            )
            return ""
        origin = origin_with_port(origin)
    mine = origin or origin_with_port(oidc.origin, listen.port)
    if (origin or listen.port != 0) and mine == origin_with_port(oidc.origin):
        c.problems.add(
            c.key("origin") if origin else c.key("listen.port"),
            f"gives the console the proxied apps' origin ({oidc.origin}); it needs an origin of "
            "its own, another port on that host (decision 035)",
        )
        return ""
    if login.scheme == "http" and not _loopback(login.hostname or ""):
        c.problems.add(
            c.path,
            "needs https (oidc.redirect_uri): browsers send the `Sec-Fetch-*` headers the console "
            "refuses other origins' requests by only to https origins and loopback (decision 035)",
        )
    return origin


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
