"""The `upstreams` section: each upstream by name, a URL, or a URL with its TLS files (a private
CA, a client certificate). Certificates are always verified."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.model import UpstreamTLS
from gateway.config.reader import Section, http_url
from gateway.core import tls


def parse_upstreams(top: Section) -> tuple[dict[str, str], dict[str, UpstreamTLS]]:
    """(URL by name, TLS settings by name for those that have any)."""
    up = top.section("upstreams")
    upstreams: dict[str, str] = {}
    upstream_tls: dict[str, UpstreamTLS] = {}
    for name in up.data:
        url, tls_cfg = _parse_upstream(up, str(name))
        if url is not None:
            upstreams[str(name)] = url.rstrip("/")
        if tls_cfg is not None:
            upstream_tls[str(name)] = tls_cfg
    up.finish()
    return upstreams, upstream_tls


def _parse_upstream(up: Section, name: str) -> tuple[str | None, UpstreamTLS | None]:
    """`name: URL`, or `name: {url, ca_file, client_cert_file, client_key_file}` for TLS."""
    if not isinstance(up.data.get(name), Mapping):
        return up.get(name, str, ..., http_url), None
    u = up.section(name)
    url = u.get("url", str, ..., http_url)
    ca = u.path_of("ca_file", None)
    cert = u.path_of("client_cert_file", None)
    key = u.path_of("client_key_file", None)
    u.finish()
    if (cert is None) != (key is None):
        u.problems.add(u.key("client_cert_file"), "give client_cert_file and client_key_file")
        return url, None
    if ca is None and cert is None:
        return url, None
    if url is not None and not url.startswith("https://"):
        u.problems.add(u.key("url"), "must be https:// when TLS files are given")
    if not u.files({"ca_file": ca, "client_cert_file": cert, "client_key_file": key}):
        return url, UpstreamTLS(ca, cert, key)
    u.check_tls("ca_file" if ca else "client_cert_file", lambda: tls.client_context(ca, cert, key))
    return url, UpstreamTLS(ca, cert, key)
