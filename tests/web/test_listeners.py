"""Slow and abusive clients, connection limits, the admin listener (THREAT_MODEL.md, decisions 009 and 010).

The gateway runs on its real listeners in this process; clients are raw sockets, so each test
controls exactly what goes on the wire and when.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from gateway.core.tasks import spawn
from tests.conftest import Keys, ServeFactory, Upstream, spool_events, upstream_errors

pytestmark = pytest.mark.slow


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sent until it closed the connection (TimeoutError if it did not)."""
    async with asyncio.timeout(within):
        return await reader.read()


def head(path: str, token: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    ).encode()


async def test_slowloris_connections_are_closed_while_others_are_served(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url, proxy={"client_header_timeout_seconds": 0.5})
    token = keys.token("alice", ["hr_officer"])
    slow = [await connect(gw.proxy_port) for _ in range(20)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        """A request head a byte at a time, never finished, for up to 10 s."""
        data = head("/hr/employees/1", token)[:-2]
        for byte in data[:100]:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    tricklers = [spawn(trickle(w), name="trickle") for _, w in slow]
    try:
        url, auth = f"{gw.proxy_url}/hr/employees/1", {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as s, s.get(url, headers=auth) as r:
            assert r.status == 200  # meanwhile, an ordinary client is served
        for reader, _ in slow:  # each slow connection is cut though it keeps sending
            assert await closed_by_server(reader, within=5) == b""
    finally:
        for t in tricklers:
            t.cancel()
        for _, w in slow:
            w.close()
    assert upstream.seen[0].raw_path == "/hr/employees/1" and len(upstream.seen) == 1


async def test_a_request_body_that_stops_arriving_is_408_audited_and_never_completed_upstream(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url, proxy={"client_body_timeout_seconds": 0.5})
    reader, writer = await connect(gw.proxy_port)
    writer.write(
        b"POST /hr/employees HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n"
        + f"Authorization: Bearer {keys.token('alice', ['hr_officer'])}\r\n\r\n".encode()
        + b"only ten b"
    )
    reply = await closed_by_server(reader, within=10)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:60]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "request_timeout" and body["request_id"]
    assert upstream.seen == []  # the upstream never got a complete request
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["status"], event["outcome"]) == (
        "allow",
        408,
        "client_body_timeout",
    )
    assert event["request_id"] == body["request_id"]


async def test_a_clients_body_faults_are_client_errors_never_upstream_errors(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    """A body that is too large (declared or streamed past the limit) or stops arriving is the
    client's doing: counted in pdgw_client_errors_total, never in pdgw_upstream_errors_total,
    which drives the upstream-errors alert (deploy/prometheus/alerts.yml)."""
    gw = await serve_gateway(
        upstream.url, proxy={"client_body_timeout_seconds": 0.5, "max_body_bytes": 1000}
    )
    token = keys.token("alice", ["hr_officer"])
    head = f"POST /hr/employees HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
    for request, status in (
        (head + "Content-Length: 2000\r\n\r\n", b"413"),  # declared too large
        (
            head
            + "Transfer-Encoding: chunked\r\n\r\n"
            + "3e8\r\n"
            + "y" * 1000
            + "\r\n"
            + "3e8\r\n"
            + "y" * 1000
            + "\r\n0\r\n\r\n",
            b"413",
        ),  # streamed past it
        (head + "Content-Length: 100\r\n\r\nonly ten b", b"408"),  # stops arriving
    ):
        reader, writer = await connect(gw.proxy_port)
        writer.write(request.encode())
        reply = await closed_by_server(reader, within=10)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 " + status), reply[:60]
    assert upstream.seen == []
    route = "hr-employees"
    assert gw.metric("pdgw_client_errors_total", {"route": route, "kind": "body_too_large"}) == 2
    assert (
        gw.metric("pdgw_client_errors_total", {"route": route, "kind": "client_body_timeout"}) == 1
    )
    assert upstream_errors(gw, route) == 0


async def test_connections_beyond_the_per_address_limit_are_refused_with_503(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url, proxy={"client_max_connections_per_address": 3})
    held = [await connect(gw.proxy_port) for _ in range(3)]
    reader, writer = await connect(gw.proxy_port)
    reply = await closed_by_server(reader, within=5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 503"), reply[:60]
    assert b"X-Request-Id: " in reply and b"too many connections from your address" in reply
    labels = {"listener": "proxy", "reason": "too_many_connections_from_address"}
    assert gw.metric("pdgw_connections_refused_total", labels) == 1
    assert gw.metric("pdgw_connections_open", {"listener": "proxy"}) == 3

    held[0][1].close()  # one slot frees: the next client is served
    await asyncio.sleep(0.1)
    reader, writer = await connect(gw.proxy_port)
    writer.write(
        head("/hr/employees/1", keys.token("alice", ["hr_officer"]), "Connection: close\r\n")
    )
    reply = await closed_by_server(reader, within=5)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:60]
    for _, w in [*held[1:], (reader, writer)]:
        w.close()


async def test_the_total_limit_holds_for_trusted_proxies_which_have_no_per_address_limit(
    serve_gateway: ServeFactory, upstream: Upstream
) -> None:
    gw = await serve_gateway(
        upstream.url,
        proxy={
            "trusted_proxies": ["127.0.0.1/32"],  # a load balancer: many clients, one address
            "client_max_connections_per_address": 1,
            "client_max_connections": 3,
        },
    )
    held = [await connect(gw.proxy_port) for _ in range(3)]
    for reader, _ in held:  # all three admitted, though the per-address limit is 1
        with pytest.raises(TimeoutError):
            await closed_by_server(reader, within=0.2)
    reader, writer = await connect(gw.proxy_port)
    reply = await closed_by_server(reader, within=5)
    assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
    for _, w in [*held, (reader, writer)]:
        w.close()


async def test_request_heads_over_the_configured_size_are_refused(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url, proxy={"client_max_header_bytes": 2048})
    token = keys.token("alice", ["hr_officer"])
    for extra in (f"X-Big: {'a' * 3000}\r\n", "".join(f"X-H{i}: v\r\n" for i in range(120))):
        reader, writer = await connect(gw.proxy_port)
        writer.write(head("/hr/employees/1", token, extra))
        reply = await closed_by_server(reader, within=5)
        writer.close()
        assert reply.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), reply[:60]
    assert upstream.seen == []


async def test_admin_listener_admits_only_allowed_networks(
    serve_gateway: ServeFactory, upstream: Upstream
) -> None:
    default = await serve_gateway(upstream.url)
    assert default.cfg.admin_listen.host == "127.0.0.1"
    async with aiohttp.ClientSession() as s, s.get(f"{default.admin_url}/healthz") as r:
        assert r.status == 200  # loopback: allowed by default

    elsewhere = await serve_gateway(upstream.url, listen={"admin": {"allow": ["10.0.0.0/8"]}})
    reader, writer = await connect(elsewhere.admin_port)
    reply = await closed_by_server(reader, within=5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 403") and b"X-Request-Id" in reply
    labels = {"listener": "admin", "reason": "peer_not_allowed"}
    assert elsewhere.metric("pdgw_connections_refused_total", labels) == 1


async def test_every_admin_api_needs_a_token_and_none_is_reachable_through_the_proxy_port(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys, chdb_dir: Path
) -> None:
    from tests.stores import fresh_database, store_section

    store = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    gw = await serve_gateway(
        upstream.url, authz={"policy_admin_roles": ["security_officer"]}, store=store
    )
    from gateway.runtime.app import build

    _, admin_app = build(gw.cfg)
    admin_apis = sorted(
        (route.method, re.sub(r"\{[^}]+\}", "1001", route.resource.canonical))
        for route in admin_app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/admin/")
    )
    # Every /admin/ route — the policy and break-glass APIs, the audit query API, subject blocks.
    assert {("POST", "/admin/break-glass"), ("PUT", "/admin/policy")} <= set(admin_apis)
    assert ("GET", "/admin/audit/events") in admin_apis
    token = keys.token("alice", ["hr_officer"])  # valid, but no admin job function
    async with aiohttp.ClientSession() as s:
        for method, path in admin_apis:
            async with s.request(method, gw.admin_url + path, json={}) as r:
                assert r.status == 401, path
            async with s.request(
                method, gw.admin_url + path, json={}, headers={"Authorization": f"Bearer {token}"}
            ) as r:
                assert r.status in (400, 403), path  # authenticated, then refused
        for method, path in [*admin_apis, ("GET", "/metrics"), ("GET", "/readyz")]:
            body = None if method in ("GET", "HEAD") else {}  # refused first with a body (400)
            async with s.request(
                method, gw.proxy_url + path, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as r:
                assert r.status == 404, path  # the proxy port has no such route
            async with s.request(method, gw.proxy_url + path, json=body) as r:
                assert r.status == 401, path  # and says nothing about routes without a token
    assert upstream.seen == []


def test_connection_gate_counts_and_releases() -> None:
    from gateway.web.listeners import ConnectionGate

    gate = ConnectionGate(max_total=2, max_per_address=1)
    assert gate.admit("127.0.0.1") is None
    assert gate.admit("127.0.0.1") == "too_many_connections_from_address"
    assert gate.admit("::1") is None
    assert gate.admit("127.0.0.2") == "too_many_connections"
    gate.release("127.0.0.1")
    assert gate.admit("127.0.0.2") is None and gate.open == 2
