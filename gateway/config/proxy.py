"""The `proxy` section: trusted proxies (required: an empty list is a choice), timeouts, limits on
clients, bodies and upstream responses (decision 010), headers never forwarded."""

from __future__ import annotations

import re

from gateway.config.listen import networks
from gateway.config.model import ProxyConfig
from gateway.config.reader import Check, Section, at_least, positive
from gateway.config.vocabulary import header_key

D = ProxyConfig  # the defaults


def parse_proxy(top: Section) -> ProxyConfig:
    px = top.section("proxy")

    def seconds(name: str) -> float:
        value: float = px.get(name, float, getattr(D, name), positive)
        return value

    def count(name: str, check: Check = positive) -> int:
        value: int = px.get(name, int, getattr(D, name), check)
        return value

    proxy = ProxyConfig(
        trusted_proxies=networks(px, "trusted_proxies", ...),  # required: [] is a choice
        connect_timeout_seconds=seconds("connect_timeout_seconds"),
        read_timeout_seconds=seconds("read_timeout_seconds"),
        max_connections=count("max_connections"),
        forward_authorization=px.get("forward_authorization", bool, D.forward_authorization),
        shutdown_timeout_seconds=seconds("shutdown_timeout_seconds"),
        max_body_bytes=count("max_body_bytes", at_least(1)),
        client_header_timeout_seconds=seconds("client_header_timeout_seconds"),
        client_body_timeout_seconds=seconds("client_body_timeout_seconds"),
        client_max_connections=count("client_max_connections"),
        client_max_connections_per_address=count("client_max_connections_per_address"),
        client_max_header_bytes=count("client_max_header_bytes", at_least(1024)),
        client_max_headers=count("client_max_headers", at_least(8)),
        upstream_max_response_bytes=count("upstream_max_response_bytes", at_least(1)),
        upstream_timeout_seconds=seconds("upstream_timeout_seconds"),
        strip_headers=_header_names(px, "strip_headers"),
        websocket_idle_timeout_seconds=seconds("websocket_idle_timeout_seconds"),
        websocket_max_duration_seconds=seconds("websocket_max_duration_seconds"),
        websocket_max_message_bytes=count("websocket_max_message_bytes", at_least(1024)),
        public_hosts=_hosts(px, "public_hosts"),
    )
    px.finish()
    return proxy


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 §5.6.2 token


def _header_names(sec: Section, key: str) -> frozenset[str]:
    names = sec.get(key, list, [])
    out = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            sec.problems.add(f"{sec.key(key)}.{i}", "must be a header name")
            continue
        out.add(header_key(name))
    return frozenset(out)


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(:[0-9]{1,5})?\Z")  # RFC 9110 §7.2


def _hosts(sec: Section, key: str) -> frozenset[str]:
    out = set()
    for i, value in enumerate(sec.get(key, list, [])):
        if not isinstance(value, str) or not _HOST.match(value):
            sec.problems.add(f"{sec.key(key)}.{i}", "must be a host name, optionally with :port")
            continue
        out.add(value.lower())
    return frozenset(out)
