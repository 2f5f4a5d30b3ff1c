"""The test helpers themselves: they must not leak into the next test."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.conftest import GatewayFactory, HandlerUpstream, Keys, raw_request


async def test_raw_request_reads_the_response_and_releases_its_connection(
    make_gateway: GatewayFactory, upstream_serving: HandlerUpstream, keys: Keys
) -> None:
    async def slow_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)  # the headers now, the body later
        await asyncio.sleep(0.2)
        await resp.write(b'{"ok": true}')
        await resp.write_eof()
        return resp

    gw = await make_gateway(await upstream_serving(slow_body))
    token = keys.token("alice", ["hr_officer"])
    resp = await raw_request(gw, "GET", "/hr/employees/1", {"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    # Released now, not when the garbage collector finds it during some later test (whose
    # `filterwarnings = error` then fails on the ResourceWarning).
    assert resp.closed and resp.connection is None
    assert await resp.json() == {"ok": True}
