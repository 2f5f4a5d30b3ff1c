"""WebSockets through the gateway (decision 024), against a real aiohttp WebSocket upstream: the
upgrade authorised and recorded before the upstream hears of it, the outcome at close, the
limits, and the upgrades that must never become a tunnel."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ROUTES, GatewayFactory, HandlerUpstream, Keys, exchange, spool_events

LIVE = {
    "name": "hr-live",
    "prefix": "/hr/live",
    "upstream": "hr",
    "system": "hr",
    "purpose": "hr_records",
    "category": "employee",
    "subject": {"path": "/hr/live/{id}"},
    "websocket": True,
}


class WsUpstream:
    """An aiohttp WebSocket echo endpoint that notes what it saw at the handshake."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.spool_at_handshake: list[list[dict[str, Any]]] = []
        self.spool_dir: Any = None
        self.refuse = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append(dict(request.headers))
        if self.spool_dir is not None:
            self.spool_at_handshake.append(spool_events(self.spool_dir))
        if self.refuse:
            return web.Response(status=403, text="not for you")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(text="plain")
        ws = web.WebSocketResponse(protocols=("chat.v1",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4000)
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


@pytest.fixture
async def live(
    make_gateway: GatewayFactory, upstream_serving: HandlerUpstream
) -> tuple[Any, WsUpstream]:
    up = WsUpstream()
    url = await upstream_serving(up.handle)
    gw = await make_gateway(
        url,
        routes=[LIVE, *ROUTES],
        proxy={"websocket_idle_timeout_seconds": 1, "websocket_max_message_bytes": 2048},
    )
    up.spool_dir = gw.cfg.audit.spool_dir
    return gw, up


def _auth(keys: Keys, user: str = "alice", role: str = "hr_officer") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token(user, [role])}"}


async def test_a_websocket_is_recorded_before_the_upgrade_and_its_outcome_at_close(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, up = live
    async with gw.client.ws_connect(
        "/hr/live/1001", headers=_auth(keys), protocols=("chat.v1",)
    ) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"abc")
        assert (await ws.receive()).data == b"cba"
    (before,) = up.spool_at_handshake
    assert [(e["decision"], e["user"], e["subject_ids"]) for e in before] == [
        ("allow", "alice", ["1001"])
    ]
    assert before[0]["outcome"] == "unknown"  # on record, its outcome not yet
    await asyncio.sleep(0.1)
    (event,) = spool_events(gw.cfg.audit.spool_dir)
    assert (event["method"], event["action"], event["status"]) == ("GET", "read", 101)
    assert event["outcome"] == "client_closed"
    assert (event["bytes_in"], event["bytes_out"]) == (len("hello") + 3, len("echo:hello") + 3)
    (hs,) = up.handshakes
    assert hs["X-PD-User"] == "alice" and "Authorization" not in hs


async def test_the_upstream_closing_is_recorded_as_such_and_its_close_code_passed_on(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, _ = live
    async with gw.client.ws_connect("/hr/live/1", headers=_auth(keys)) as ws:
        await ws.send_str("close-me")
        msg = await ws.receive()
        assert msg.type == WSMsgType.CLOSE and msg.data == 4000
    await asyncio.sleep(0.1)
    (event,) = spool_events(gw.cfg.audit.spool_dir)
    assert event["outcome"] == "upstream_closed"


async def test_an_idle_socket_and_an_oversized_message_are_closed_by_the_gateway(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, _ = live
    async with gw.client.ws_connect("/hr/live/1", headers=_auth(keys)) as ws:
        msg = await ws.receive(timeout=5)  # nothing sent: idle limit 1 s
        assert msg.type == WSMsgType.CLOSE and msg.data == 1001
    async with gw.client.ws_connect("/hr/live/2", headers=_auth(keys)) as ws:
        await ws.send_str("x" * 4096)  # limit 2048
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE and msg.data == 1009
    await asyncio.sleep(0.1)
    assert [e["outcome"] for e in spool_events(gw.cfg.audit.spool_dir)] == [
        "idle_timeout",
        "message_too_big",
    ]


async def test_an_upgrade_is_authorised_like_any_request_of_its_route(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, up = live
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect("/hr/live/1", headers=_auth(keys, "mallory", "support_agent"))
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
        await gw.client.ws_connect("/hr/live/1")
    assert anonymous.value.status == 401
    # A route that does not declare `websocket: true`: refused, recorded, never upgraded.
    with pytest.raises(aiohttp.WSServerHandshakeError) as undeclared:
        await gw.client.ws_connect("/hr/employees/1", headers=_auth(keys))
    assert undeclared.value.status == 400
    assert up.handshakes == []
    reasons = [(e["decision"], e["reason"]) for e in spool_events(gw.cfg.audit.spool_dir)]
    assert reasons == [("deny", "no_matching_rule"), ("deny", "websocket_not_allowed")]


async def test_an_upgrade_the_upstream_refuses_is_a_502_and_never_a_101(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, up = live
    up.refuse = True
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect("/hr/live/1", headers=_auth(keys))
    assert refused.value.status == 502
    (event,) = spool_events(gw.cfg.audit.spool_dir)
    assert (event["status"], event["outcome"]) == (502, "upstream_refused_upgrade")


async def test_other_upgrades_are_refused_and_a_lone_connection_upgrade_is_a_plain_request(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, up = live
    port = gw.client.server.port
    token = keys.token("alice", ["hr_officer"]).encode()
    for upgrade in (b"h2c", b"websocket, h2c", b"TLS/1.0"):
        raw = (
            b"GET /hr/live/1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: " + upgrade + b"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
            b"Authorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"
            b"GET /hr/medical/1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reply = await asyncio.to_thread(exchange, port, raw)
        assert reply.startswith(b"HTTP/1.1 400"), (upgrade, reply[:80])
    assert up.handshakes == []
    # `Connection: upgrade` with no `Upgrade`: nothing to switch to, forwarded as a plain GET.
    r = await gw.client.get("/hr/live/1", headers={**_auth(keys), "Connection": "upgrade"})
    assert r.status == 200 and await r.text() == "plain"
    (hs,) = up.handshakes
    assert "Upgrade" not in hs and "upgrade" not in hs.get("Connection", "").lower()


async def test_a_client_handshake_without_a_key_is_refused_before_the_upstream_hears_of_it(
    live: tuple[Any, WsUpstream], keys: Keys
) -> None:
    gw, up = live
    headers = {**_auth(keys), "Connection": "Upgrade", "Upgrade": "websocket"}
    r = await gw.client.get("/hr/live/1", headers=headers)
    assert r.status == 400 and up.handshakes == []


async def test_a_socket_lives_no_longer_than_its_bearer_token(
    make_gateway: GatewayFactory, upstream_serving: HandlerUpstream, keys: Keys
) -> None:
    up = WsUpstream()
    gw = await make_gateway(await upstream_serving(up.handle), routes=[LIVE, *ROUTES])
    token = keys.token("alice", ["hr_officer"], ttl=2)
    async with gw.client.ws_connect(
        "/hr/live/1", headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.CLOSE
    await asyncio.sleep(0.1)
    (event,) = spool_events(gw.cfg.audit.spool_dir)
    assert event["outcome"] == "max_duration"
