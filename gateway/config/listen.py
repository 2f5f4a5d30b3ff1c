"""The `listen` section: the proxy and admin listeners, their TLS and who may connect."""

from __future__ import annotations

import ipaddress
from typing import Any

from gateway.config.model import ADMIN_PORT, LOOPBACK, PROXY_PORT, IPNetwork, Listen, ListenerTLS
from gateway.config.reader import Section, port
from gateway.core import tls


def parse_listeners(top: Section) -> tuple[Listen, Listen]:
    """(proxy, admin)."""
    listen = top.section("listen", required=False)
    proxy = parse_listen(listen.section("proxy", required=False), PROXY_PORT, ())
    # SECURITY: the admin port defaults to loopback, and only loopback peers may connect;
    # exposing it is an explicit choice (host and allow).
    admin = parse_listen(listen.section("admin", required=False), ADMIN_PORT, LOOPBACK)
    listen.finish()
    return proxy, admin


def parse_listen(sec: Section, default_port: int, allow: tuple[IPNetwork, ...]) -> Listen:
    listen = Listen(
        host=sec.get("host", str, Listen.host),
        port=sec.get("port", int, default_port, port),
        tls=_parse_listener_tls(sec),
        allow=networks(sec, "allow", list(allow)),
    )
    sec.finish()
    return listen


def networks(sec: Section, key: str, default: Any) -> tuple[IPNetwork, ...]:
    """A list of networks; ``default`` ``...`` makes the key required."""
    out: list[IPNetwork] = []
    for i, net in enumerate(sec.get(key, list, default) or ()):
        try:
            out.append(ipaddress.ip_network(str(net), strict=False))
        except ValueError:
            sec.problems.add(f"{sec.key(key)}.{i}", f"{net!r} is not a network")
    return tuple(out)


def _parse_listener_tls(sec: Section) -> ListenerTLS | None:
    t = sec.optional("tls")
    if t is None:
        return None
    cert, key = t.path_of("cert_file"), t.path_of("key_file")
    client_ca = t.path_of("client_ca_file", None)
    t.finish()
    if cert is None or key is None:
        return None
    if not t.files({"cert_file": cert, "key_file": key, "client_ca_file": client_ca}):
        return ListenerTLS(cert, key, client_ca)
    t.check_tls("cert_file", lambda: tls.server_context(cert, key))
    if client_ca is not None:
        t.check_tls("client_ca_file", lambda: tls.server_context(cert, key, client_ca))
    return ListenerTLS(cert, key, client_ca)
