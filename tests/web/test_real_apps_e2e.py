"""Apps and OpenID providers nobody here wrote, behind the gateway, in a real Chromium
(docs/real-apps.md): a stock Django project's admin, a Flask app with Flask-WTF CSRF and
Flask-Login, an aiohttp WebSocket app driven from its page; the npm `oidc-provider` (with and
without refresh tokens and end-session) and django-oauth-toolkit's OIDC provider. Each app runs
with its settings as generated; the gateway's config names only the route. Screenshots of every
step under var/screenshots/real-apps/."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.testing.chserver import free_port
from tests.conftest import ServeFactory, spool_records
from tests.oidc_provider import oidc_section, provider_available, revoke_sessions, run_provider
from tests.realapps import django_site, dot_provider, flask_notes
from tests.web.chromium import chromium, chromium_available, loopback_context, screenshot_folder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not provider_available() or not chromium_available(),
        reason="needs chromium and deploy/oidc-demo's npm install (scripts/system-deps.sh)",
    ),
]
USERS = {"alice": ["hr_officer"]}


def route(name: str, prefix: str, **more: Any) -> dict[str, Any]:
    """What the gateway's config says of an app: its route, nothing else."""
    return {
        "name": name,
        "prefix": prefix,
        "upstream": "hr",
        "system": "hr",
        "purpose": "hr_records",
        "category": "employee",
        **more,
    }


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    return screenshot_folder("real-apps", request.node.name)


def auth_events(spool: Path) -> list[tuple[str, str]]:
    return [(r["event"], r["reason"]) for r in spool_records(spool) if r["kind"] == "auth_event"]


async def npm_provider_login(page: Any, user: str, gateway: str) -> None:
    """The npm oidc-provider's development login page, and its consent page if it asks."""
    await page.fill('input[name="login"]', user)
    await page.fill('input[name="password"]', "any")
    await page.click("button[type=submit]")
    for _ in range(50):
        if page.url.startswith(gateway):
            return
        if await page.locator('input[name="prompt"][value="consent"]').count():
            await page.click("button[type=submit]")
        await asyncio.sleep(0.1)
    raise AssertionError(f"never back at the gateway: {page.url}")


async def dot_login(page: Any, user: str, password: str) -> None:
    """django-oauth-toolkit sends the browser to its Django login page (LOGIN_URL)."""
    await page.fill("#id_username", user)
    await page.fill("#id_password", password)
    await page.click("input[type=submit]")


async def gateway_logout(page: Any, gw_url: str) -> None:
    await page.goto(gw_url + "/_pdgw/logout")
    await page.click("#submit")


async def back_shows_nothing_of(
    page: Any, app_paths: tuple[str, ...], secrets: list[str], shots: Any, steps: int
) -> list[str]:
    """Back, step by step through the history of the session: no page shows what it held, and
    the walk does reach the app's pages (URLs under ``app_paths``) — each asks to log in now."""
    seen = []
    for i in range(steps):
        await page.go_back(wait_until="load")
        await asyncio.sleep(0.3)
        content = await page.content()
        seen.append(page.url)
        await page.screenshot(path=shots(f"back-{i + 1}"))
        for secret in secrets:
            assert secret not in content, (i, page.url)
    print("Back walked through:", seen)
    assert any(urlsplit(u).path.startswith(app_paths) for u in seen) or any(
        "return_to" in u or "/authorize" in u or "/auth" in u for u in seen
    ), seen
    return seen


async def test_stock_django_admin_behind_the_gateway_with_oidc_provider_without_refresh_tokens(
    serve_gateway: ServeFactory, tmp_path: Path, shots: Callable[[str], Path]
) -> None:
    """Log in (gateway, then Django's own admin login), add a document with a file, change it,
    live through a silent renewal, lose nothing typed when renewal needs a login, be revoked,
    log out of Django and of the gateway (end-session at the provider), and Back shows nothing."""
    gw_port = free_port()
    upload = tmp_path / "contract.txt"
    upload.write_text("employment contract of Ivanova A. S.")
    with (
        run_provider(
            tmp_path / "p", [gw_port], USERS, refresh_tokens="spec", host="localhost"
        ) as provider,
        django_site(tmp_path) as django,
    ):
        served = await serve_gateway(
            django.url,
            listen={"proxy": {"port": gw_port}},
            proxy={"public_hosts": [f"127.0.0.1:{gw_port}"]},
            routes=[route("staffsite", "/")],
            oidc=oidc_section(tmp_path, provider, gw_port, refresh_interval_seconds=4),
        )
        gw = served.proxy_url
        async with chromium() as browser:
            context = await loopback_context(browser)
            page = await context.new_page()

            # 1. The gateway's login (the provider), then Django's own admin login.
            await page.goto(gw + "/admin/")
            assert page.url.startswith(provider.issuer)
            await page.screenshot(path=shots("01-provider-login"))
            await npm_provider_login(page, "alice", gw)
            await page.wait_for_url(gw + "/admin/login/?next=/admin/")
            await page.screenshot(path=shots("02-django-admin-login"))
            await page.fill("#id_username", django.admin_user)
            await page.fill("#id_password", django.admin_password)
            await page.click("input[type=submit]")  # a POST Django checks against Origin
            await page.wait_for_url(gw + "/admin/")
            assert "Site administration" in await page.content()
            await page.screenshot(path=shots("03-django-admin"))

            # 2. Add an object with an uploaded file; change it.
            await page.goto(gw + "/admin/documents/document/add/")
            await page.fill("#id_title", "Personnel file of Ivanova")
            await page.set_input_files("#id_attachment", str(upload))
            await page.click("input[name=_save]")
            await page.wait_for_url(gw + "/admin/documents/document/")
            assert "was added successfully" in await page.content()
            await page.screenshot(path=shots("04-document-added"))
            await page.click("text=Personnel file of Ivanova")
            await page.fill("#id_title", "Personnel file of Ivanova A. S.")
            await page.click("input[name=_save]")
            await page.wait_for_url(gw + "/admin/documents/document/")
            assert "was changed successfully" in await page.content()
            await page.screenshot(path=shots("05-document-changed"))
            stored = list((django.root / "media" / "documents").iterdir())
            assert [f.read_text() for f in stored] == [upload.read_text()]

            # 3. No refresh token: the next navigation renews the session silently.
            await asyncio.sleep(4.5)
            await page.goto(gw + "/admin/documents/document/")
            await page.wait_for_url(gw + "/admin/documents/document/")
            assert "Personnel file of Ivanova A. S." in await page.content()
            assert ("refresh", "silent_login") in auth_events(served.spool_dir)

            # 4. A form sent when the session needs a login: a page that says so; logging in
            # again in a new tab, then Reload, sends the typed change after all.
            await page.click("text=Personnel file of Ivanova A. S.")
            change_url = page.url
            await page.fill("#id_title", "Personnel file, checked")
            await asyncio.sleep(4.5)
            await page.click("input[name=_save]")
            await page.wait_for_selector("#next")
            content = await page.content()
            assert "has not been saved" in content and "bearer" not in content.lower()
            await page.screenshot(path=shots("06-log-in-again-page"))
            async with context.expect_page() as new_tab:
                await page.click("#next")
            tab = await new_tab.value
            await tab.wait_for_url(gw + "/_pdgw/renewed")
            await tab.screenshot(path=shots("07-logged-in-again-tab"))
            await tab.close()
            await page.reload()  # the browser sends the form again
            await page.wait_for_url(gw + "/admin/documents/document/")
            assert "Personnel file, checked" in await page.content()
            await page.screenshot(path=shots("08-form-resent"))
            assert change_url.endswith("/change/")

            # 5. Revoked (an operator's `pd-gateway session revoke`): asked to log in again.
            revoke_sessions(tmp_path, "alice")
            await asyncio.sleep(0.4)
            await page.goto(gw + "/admin/")
            await page.wait_for_url(gw + "/admin/")  # the provider still knows alice
            assert ("revoked", "session_revoked") in auth_events(served.spool_dir)

            # 6. Log out of Django (its POST form), then of the gateway and the provider.
            await page.click("#logout-form button")
            await page.wait_for_load_state()
            assert "Logged out" in await page.content()
            await page.screenshot(path=shots("09-django-logged-out"))
            await gateway_logout(page, gw)
            await page.wait_for_url(provider.issuer + "/**")
            await page.screenshot(path=shots("10-provider-end-session"))
            await page.click("button[name=logout]")
            await page.wait_for_url(gw + "/_pdgw/logged-out")
            await page.screenshot(path=shots("11-logged-out"))

            # 7. Back shows nothing that held personal data.
            await back_shows_nothing_of(page, ("/admin/",), ["Personnel file", "Ivanova"], shots, 8)
            await context.close()
    events = auth_events(served.spool_dir)
    assert events[0] == ("login", "") and ("logout", "") in events
    access = [r for r in spool_records(served.spool_dir) if r["kind"] == "access"]
    assert {r["method"] for r in access} >= {"GET", "POST"}
    assert all(r["user"] == "alice" for r in access)


async def test_flask_app_behind_the_gateway_with_django_oauth_toolkit_without_end_session(
    serve_gateway: ServeFactory, tmp_path: Path, shots: Callable[[str], Path]
) -> None:
    """The second framework family and the second provider: login, the app's own login, a note
    with a file, refresh with the refresh token, revocation at the provider, logout without
    end-session, Back."""
    gw_port = free_port()
    upload = tmp_path / "certificate.txt"
    upload.write_text("medical certificate no. 77")
    with (
        dot_provider(tmp_path / "idp", [gw_port], users=USERS, end_session=False) as provider,
        flask_notes(tmp_path) as notes,
    ):
        served = await serve_gateway(
            notes,
            listen={"proxy": {"port": gw_port}},
            routes=[route("notes", "/")],
            oidc=oidc_section(tmp_path, provider, gw_port, refresh_interval_seconds=3),
        )
        gw = served.proxy_url
        async with chromium() as browser:
            context = await loopback_context(browser)
            page = await context.new_page()

            await page.goto(gw + "/")
            assert page.url.startswith(provider.issuer.removesuffix("/o"))
            await page.screenshot(path=shots("01-dot-login"))
            await dot_login(page, "alice", provider.password)
            await page.wait_for_url(gw + "/login?next=%2F")
            await page.screenshot(path=shots("02-flask-login"))
            await page.fill("#username", "clerk")
            await page.fill("#password", "notes password 1")
            await page.click("#login")  # Flask-WTF checks its CSRF token
            await page.wait_for_url(gw + "/")
            await page.click("#new")
            await page.fill("#title", "Sick leave of Petrov")
            await page.set_input_files("#attachment", str(upload))
            await page.click("#save")
            await page.wait_for_url(gw + "/")
            assert "Sick leave of Petrov" in await page.content()
            await page.screenshot(path=shots("03-note-added"))
            await page.click("a.note")
            await page.fill("#title", "Sick leave of Petrov B. I.")
            await page.click("#save")
            await page.wait_for_url(gw + "/")
            await page.click("text=certificate.txt")
            assert upload.read_text() in await page.content()
            await page.go_back()
            await page.screenshot(path=shots("04-note-changed"))

            # Refresh with the refresh token, from a fetch.
            await asyncio.sleep(3.5)
            assert await page.evaluate("fetch('/').then(r => r.status)") == 200
            assert ("refresh", "") in auth_events(served.spool_dir)

            # The provider revokes alice's tokens: at the next refresh the session ends.
            provider.revoke_tokens("alice")
            await asyncio.sleep(3.5)
            assert await page.evaluate("fetch('/').then(r => r.status)") == 401
            assert ("expired", "refresh_failed") in auth_events(served.spool_dir)
            await page.goto(gw + "/")  # a navigation logs in again (the provider knows alice)
            await page.wait_for_url(gw + "/")
            await page.screenshot(path=shots("05-after-provider-revocation"))

            await page.click("#logout")  # the app's own logout (a CSRF-protected POST)
            await page.wait_for_url(gw + "/login")
            await gateway_logout(page, gw)
            await page.wait_for_url(gw + "/_pdgw/logged-out?provider=kept")
            assert "may still be signed in there" in await page.content()
            await page.screenshot(path=shots("06-logged-out-provider-kept"))
            await back_shows_nothing_of(
                page, ("/notes", "/files"), ["Sick leave", "Petrov"], shots, 8
            )
            await context.close()
    events = auth_events(served.spool_dir)
    assert events.count(("login", "")) == 2 and ("logout", "") in events


def _live_app() -> web.Application:
    """An aiohttp app: a page whose script opens a WebSocket to its own origin and echoes."""
    page = """<!doctype html><html><head><meta charset="utf-8"><title>Live</title></head><body>
<h1>Live updates</h1><p id="state">connecting</p><ul id="log"></ul>
<script>
const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/live/ws/1001');
const log = (t) => { const li = document.createElement('li'); li.textContent = t;
  document.getElementById('log').append(li); };
ws.onopen = () => { document.getElementById('state').textContent = 'open'; ws.send('hello'); };
ws.onmessage = (e) => log(e.data);
ws.onclose = (e) => { document.getElementById('state').textContent = 'closed ' + e.code; };
window.sendLive = (t) => ws.send(t);
</script></body></html>"""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(f"employee 1001 opened by {request.headers.get('X-PD-User')}")
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo: " + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/live/", index)
    app.router.add_get("/live/ws/{id}", socket)
    return app


async def test_a_websocket_app_driven_from_the_page_with_oidc_provider_refresh_tokens(
    serve_gateway: ServeFactory,
    tmp_path: Path,
    shots: Callable[[str], Path],
    aiohttp_server: Callable[..., Any],
) -> None:
    """The page's WebSocket works through the gateway; the session refreshes with the npm
    provider's refresh token; a revocation closes the live socket (1008) within the bound."""
    gw_port = free_port()
    app: TestServer = await aiohttp_server(_live_app())
    with run_provider(tmp_path / "p", [gw_port], USERS, host="localhost") as provider:
        served = await serve_gateway(
            str(app.make_url("")).rstrip("/"),
            listen={"proxy": {"port": gw_port}},
            routes=[route("live", "/live", websocket=True)],
            oidc=oidc_section(tmp_path, provider, gw_port, refresh_interval_seconds=3),
        )
        gw = served.proxy_url
        async with chromium() as browser:
            context = await loopback_context(browser)
            page = await context.new_page()
            await page.goto(gw + "/live/")
            await npm_provider_login(page, "alice", gw)
            await page.wait_for_url(gw + "/live/")
            await page.wait_for_function("document.getElementById('state').textContent == 'open'")
            await page.wait_for_selector("text=echo: hello")
            assert "employee 1001 opened by alice" in await page.content()
            await page.evaluate("sendLive('second')")
            await page.wait_for_selector("text=echo: second")
            await page.screenshot(path=shots("01-socket-open"))

            await asyncio.sleep(3.5)
            assert await page.evaluate("fetch('/live/').then(r => r.status)") == 200
            assert ("refresh", "") in auth_events(served.spool_dir)

            revoke_sessions(tmp_path, "alice")
            await page.wait_for_function(
                "document.getElementById('state').textContent == 'closed 1008'", timeout=3000
            )
            await page.screenshot(path=shots("02-socket-closed-on-revocation"))
            await context.close()
    records = spool_records(served.spool_dir)
    socket_access = [r for r in records if r["kind"] == "access" and "/live/ws/" in r["path"]]
    assert [(r["user"], r["decision"]) for r in socket_access] == [("alice", "allow")]
    outcomes = [r for r in records if r["kind"] == "outcome" and r["status"] == 101]
    (closed,) = outcomes
    assert closed["outcome"] == "session_revoked"
    assert closed["bytes_in"] == len("hello") + len("second")


async def test_django_oauth_toolkit_end_session_logs_out_at_the_provider_too(
    serve_gateway: ServeFactory,
    tmp_path: Path,
    shots: Callable[[str], Path],
    aiohttp_server: Callable[..., Any],
) -> None:
    gw_port = free_port()
    app: TestServer = await aiohttp_server(_live_app())
    with dot_provider(tmp_path / "idp", [gw_port], users=USERS, end_session=True) as provider:
        served = await serve_gateway(
            str(app.make_url("")).rstrip("/"),
            listen={"proxy": {"port": gw_port}},
            routes=[route("live", "/live", websocket=True)],
            oidc=oidc_section(tmp_path, provider, gw_port),
        )
        gw = served.proxy_url
        async with chromium() as browser:
            context = await loopback_context(browser)
            page = await context.new_page()
            await page.goto(gw + "/live/")
            await dot_login(page, "alice", provider.password)
            await page.wait_for_url(gw + "/live/")
            await page.wait_for_selector("text=echo: hello")
            await gateway_logout(page, gw)
            await page.wait_for_url(provider.issuer + "/logout/**")
            await page.screenshot(path=shots("01-dot-logout-confirm"))
            await page.click("input[name=allow]")
            await page.wait_for_url(gw + "/_pdgw/logged-out")
            await page.screenshot(path=shots("02-logged-out"))
            await page.goto(gw + "/live/")  # the provider session ended too: its login page
            assert await page.locator("#id_username").count() == 1
            await page.screenshot(path=shots("03-asked-to-log-in"))
            await context.close()
    assert auth_events(served.spool_dir) == [("login", ""), ("logout", "")]
