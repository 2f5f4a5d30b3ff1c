"""Sessions with a provider that follows OIDC Core §11 (the npm `oidc-provider`'s own rule: a
refresh token only for `offline_access` asked with `prompt=consent`) and offers no RP-initiated
logout (decision 023): renewal by a silent login, the refusal pages, logout without end-session.
HTTP by hand; the same flows in Chromium are tests/web/test_real_apps_e2e.py."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.testing.chserver import free_port
from tests.conftest import ROUTES, HandlerUpstream, ServeFactory, Upstream
from tests.oidc_provider import (
    Provider,
    provider_available,
    revoke_sessions,
    run_provider,
)
from tests.web.browserish import NAV, XHR, MakeBrowser, browser_gateways

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not provider_available(), reason="npm install in deploy/oidc-demo (scripts/system-deps.sh)"
    ),
]
PORTS = [free_port() for _ in range(6)]
_ports = itertools.cycle(PORTS)
LIVE_ROUTE = {
    "name": "hr-live",
    "prefix": "/hr/live",
    "upstream": "hr",
    "system": "hr",
    "purpose": "hr_records",
    "category": "employee",
    "websocket": True,
}
FORM_POST = {
    "Accept": "text/html",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "same-origin",
    "Content-Type": "application/x-www-form-urlencoded",
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with run_provider(
        tmp_path_factory.mktemp("provider"), PORTS, refresh_tokens="spec", end_session=False
    ) as p:
        yield p


@pytest.fixture
async def browser_gw(
    serve_gateway: ServeFactory, provider: Provider, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[MakeBrowser]:
    async with browser_gateways(serve_gateway, provider, upstream.url, tmp_path, _ports) as make:
        yield make


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def test_without_a_refresh_token_a_navigation_renews_the_session_silently_within_its_bounds(
    browser_gw: Any,
) -> None:
    gw = await browser_gw(refresh_interval_seconds=1)
    cookie = await gw.login("alice")
    first = gw.codec.open(cookie)
    assert first.refresh_token == ""  # no offline_access asked: none issued
    await asyncio.sleep(1.2)

    # A fetch cannot be sent to the provider: 401 in words for a person, the cookie kept.
    resp, body = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
    assert resp.status == 401 and json.loads(body)["error"] == "login_required"
    assert "bearer" not in body.decode().lower() and "pdgw-session" not in resp.cookies

    # A navigation: to the provider with prompt=none, back to the same page, same session.
    resp, _ = await gw.get("/hr/employees/1001?tab=2", {"pdgw-session": cookie})
    assert resp.status == 302 and _query(resp.headers["Location"])["prompt"] == ["none"]
    login_cookie = resp.cookies["pdgw-login"].value
    callback = await gw.at_provider(resp.headers["Location"], "alice")  # no page shown
    resp, _ = await gw.get(
        callback.removeprefix(gw.url), {"pdgw-login": login_cookie, "pdgw-session": cookie}
    )
    assert resp.status == 302 and resp.headers["Location"] == "/hr/employees/1001?tab=2"
    renewed = gw.codec.open(resp.cookies["pdgw-session"].value)
    assert (renewed.sid, renewed.created_at) == (first.sid, first.created_at)  # same bounds
    assert renewed.refresh_at > first.refresh_at
    resp, _ = await gw.get(
        "/hr/employees/1001", {"pdgw-session": resp.cookies["pdgw-session"].value}
    )
    assert resp.status == 200
    events = [(e["event"], e["reason"]) for e in gw.auth_events()]
    assert events == [("login", ""), ("refresh", "silent_login")]
    sessions = {e["session"] for e in gw.auth_events()}
    assert len(sessions) == 1  # the trail follows one session through its renewal


async def test_a_form_post_on_a_session_due_for_renewal_gets_a_page_to_log_in_again_not_bearer_words(
    browser_gw: Any, upstream: Upstream
) -> None:
    gw = await browser_gw(refresh_interval_seconds=1)
    cookie = await gw.login("alice")
    await asyncio.sleep(1.2)
    resp, body = await gw.request(
        "POST",
        "/hr/employees",
        {"pdgw-session": cookie},
        {**FORM_POST, "Origin": gw.url},
        data="name=Ivanova",
    )
    page = body.decode()
    assert resp.status == 401 and resp.content_type == "text/html"
    assert "bearer" not in page.lower() and "token" not in page.lower()
    assert "has not been saved" in page and "reload" in page
    assert 'href="/_pdgw/login?return_to=/_pdgw/renewed" target="_blank"' in page
    assert all(s.method != "POST" for s in upstream.seen)  # nothing half-sent
    # The new tab logs in (the provider remembers alice) and lands on the explanation.
    resp, _ = await gw.get("/_pdgw/login?return_to=/_pdgw/renewed")
    callback = await gw.at_provider(resp.headers["Location"], "alice")
    resp, _ = await gw.get(
        callback.removeprefix(gw.url), {"pdgw-login": resp.cookies["pdgw-login"].value}
    )
    assert resp.headers["Location"] == "/_pdgw/renewed"
    fresh = resp.cookies["pdgw-session"].value
    resp, body = await gw.get("/_pdgw/renewed")
    assert resp.status == 200 and b"Go back to the tab" in body
    # The browser resends the form (Reload): it goes through now.
    resp, _ = await gw.request(
        "POST",
        "/hr/employees",
        {"pdgw-session": fresh},
        {**FORM_POST, "Origin": gw.url},
        data="name=Ivanova",
    )
    assert resp.status == 200 and upstream.seen[-1].body_bytes == len("name=Ivanova")


async def test_a_silent_login_the_provider_refuses_becomes_an_ordinary_login(
    browser_gw: Any,
) -> None:
    gw = await browser_gw(refresh_interval_seconds=1)
    cookie = await gw.login("alice")
    gw.http.cookie_jar.clear()  # the provider's session is gone (its cookies cleared)
    await asyncio.sleep(1.2)
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie})
    login_cookie = resp.cookies["pdgw-login"].value
    async with gw.http.get(resp.headers["Location"], allow_redirects=False) as r:
        callback = r.headers["Location"]
    assert _query(callback)["error"] == ["login_required"]
    resp, _ = await gw.get(
        callback.removeprefix(gw.url), {"pdgw-login": login_cookie, "pdgw-session": cookie}
    )
    assert resp.status == 302 and "prompt" not in _query(resp.headers["Location"])
    assert resp.cookies["pdgw-session"]["max-age"] == "0"
    events = [(e["event"], e["reason"]) for e in gw.auth_events()]
    assert events == [("login", ""), ("expired", "silent_login_refused")]


async def test_consent_for_offline_access_brings_a_refresh_token_from_a_spec_provider(
    browser_gw: Any,
) -> None:
    gw = await browser_gw(
        oidc={"scopes": ["openid", "offline_access"], "consent_for_offline_access": True},
        refresh_interval_seconds=1,
    )
    resp, _ = await gw.get("/hr/employees/1001")
    assert _query(resp.headers["Location"])["prompt"] == ["consent"]
    cookie = await gw.login("bob")
    assert gw.codec.open(cookie).refresh_token != ""
    await asyncio.sleep(1.2)
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
    assert resp.status in (200, 403)  # refreshed (bob's job function decides the rest)
    assert [e["event"] for e in gw.auth_events()] == ["login", "refresh"]


async def test_logout_without_end_session_clears_the_site_and_says_the_provider_session_remains(
    browser_gw: Any,
) -> None:
    gw = await browser_gw()
    cookie = await gw.login("alice")
    resp, _ = await gw.request(
        "POST", "/_pdgw/logout", {"pdgw-session": cookie}, {**NAV, "Origin": gw.url}
    )
    assert resp.status == 303
    assert resp.headers["Location"] == gw.url + "/_pdgw/logged-out?provider=kept"
    assert resp.headers["Clear-Site-Data"] == '"cache", "cookies", "storage"'
    resp, body = await gw.get("/_pdgw/logged-out?provider=kept")
    assert b"may still be signed in there" in body
    # The provider's session outlived the logout: the next login must not ride on it.
    reauth = resp.cookies["pdgw-reauth"].value
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-reauth": reauth})
    assert _query(resp.headers["Location"])["prompt"] == ["login"]
    callback = await gw.at_provider(resp.headers["Location"], "alice")
    resp, _ = await gw.get(
        callback.removeprefix(gw.url),
        {"pdgw-login": resp.cookies["pdgw-login"].value, "pdgw-reauth": reauth},
    )
    assert resp.status == 302 and resp.cookies["pdgw-reauth"]["max-age"] == "0"
    assert [e["event"] for e in gw.auth_events()] == ["login", "logout", "login"]


async def test_a_revoked_session_closes_its_live_websockets_and_a_cross_site_page_opens_none(
    browser_gw: Any, upstream_serving: HandlerUpstream
) -> None:
    """Decision 024: a session's sockets close within 2 × revocation_poll_seconds (0.2 s here)
    of a revocation; an upgrade with the session cookie from another origin is refused (CSWSH)."""

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    live = {**LIVE_ROUTE}
    gw = await browser_gw(
        upstream_url=await upstream_serving(echo), gateway={"routes": [live, *ROUTES]}
    )
    cookie = await gw.login("alice", "/hr/live/1")
    headers = {"Cookie": f"pdgw-session={cookie}"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as cross:
        await gw.gateway.ws_connect(
            gw.url + "/hr/live/1", headers={**headers, "Origin": "http://evil.example"}
        )
    assert cross.value.status == 403
    async with gw.gateway.ws_connect(
        gw.url + "/hr/live/1", headers={**headers, "Origin": gw.url}
    ) as ws:
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
        revoke_sessions(gw.shared, "alice")
        msg = await ws.receive(timeout=2)  # bound: 2 × 0.2 s, and then some for the test
        assert msg.type == WSMsgType.CLOSE and msg.data == 1008
    await asyncio.sleep(0.1)
    denied = [r["reason"] for r in gw.records("access") if r["decision"] == "deny"]
    assert denied == ["csrf_websocket_origin"]
    assert [r["outcome"] for r in gw.records("outcome")] == ["session_revoked"]
