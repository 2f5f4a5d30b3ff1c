"""A staff member in a real browser (Debian's headless Chromium, driven by Playwright) logs in
through the gateway with the real `oidc-provider`, works in the server-rendered demo HR app, meets
the refusals, and logs out (decision 014). Screenshots of every page that matters are saved under
var/screenshots/browser-e2e/ (the path is printed)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.testing.chserver import free_port
from tests.conftest import HR_APP, ROOT, ROUTES, Keys, ServeFactory, spool_records
from tests.oidc_provider import Provider, oidc_section, provider_available, run_provider
from tests.web.chromium import chromium, chromium_available, loopback_context

SHOTS = ROOT / "var" / "screenshots" / "browser-e2e"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not provider_available() or not chromium_available(),
        reason="needs chromium and deploy/oidc-demo's npm install (scripts/system-deps.sh)",
    ),
]
GATEWAY_PORT = free_port()


def _demo_upstream() -> Any:
    spec = importlib.util.spec_from_file_location(
        "demo_upstream", ROOT / "deploy" / "local" / "demo_upstream.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    # On `localhost`: its cookies apart from the gateway's on 127.0.0.1, as a provider on its own
    # host would be (the logout's Clear-Site-Data clears every cookie of the gateway's host).
    with run_provider(tmp_path_factory.mktemp("provider"), [GATEWAY_PORT], host="localhost") as p:
        yield p


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    folder = SHOTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nscreenshots: {folder}")

    def path(name: str) -> Path:
        return folder / f"{name}.png"

    return path


async def test_a_staff_member_logs_in_works_and_logs_out_in_a_real_browser(
    serve_gateway: ServeFactory,
    provider: Provider,
    aiohttp_server: Callable[..., Any],
    browser: Any,
    shots: Callable[[str], Path],
    tmp_path: Path,
    keys: Keys,
) -> None:
    app_server: TestServer = await aiohttp_server(_demo_upstream().build_app())
    app_url = str(app_server.make_url("")).rstrip("/")

    async def evil_page(request: web.Request) -> web.Response:
        # Another origin on the same site (127.0.0.1, another port): SameSite=Lax still sends
        # the cookie with this POST; the Origin check is what refuses it.
        return web.Response(
            content_type="text/html",
            text=(
                f'<form id="f" method="post" action="{gw_url}/hr/notes">'
                '<input name="text" value="planted by another site"></form>'
                "<script>document.getElementById('f').submit()</script>"
            ),
        )

    evil = web.Application()
    evil.router.add_get("/", evil_page)
    evil_server: TestServer = await aiohttp_server(evil)

    served = await serve_gateway(
        app_url,
        listen={"proxy": {"port": GATEWAY_PORT}},
        routes=[*ROUTES, HR_APP],
        oidc=oidc_section(tmp_path, provider, GATEWAY_PORT),
        authz={"policy_admin_roles": ["security_officer"]},
    )
    gw_url = served.proxy_url
    context = await loopback_context(browser)  # the provider's page @imports a web font
    page = await context.new_page()

    # 1. The page first asked for → the provider's login page → back to that page, logged in.
    await page.goto(gw_url + "/hr/people/1001")
    assert page.url.startswith(provider.issuer)
    await page.fill('input[name="login"]', "alice")
    await page.fill('input[name="password"]', "any")
    await page.screenshot(path=shots("01-provider-login"))
    await page.click("button[type=submit]")
    if await page.locator('input[name="prompt"][value="consent"]').count():
        await page.click("button[type=submit]")
    await page.wait_for_url(gw_url + "/hr/people/1001")
    assert await page.text_content("h1") == "Employee 1001"
    # 2. The identity headers the app received are the bearer path's, from the session.
    assert await page.text_content("#user") == "alice"
    assert await page.text_content("#roles") == "hr_officer"
    await page.screenshot(path=shots("02-logged-in"))

    # 3. Navigate, submit the form.
    await page.click("text=Notes")
    await page.wait_for_url(gw_url + "/hr/notes")
    await page.fill("#text", "checked the certificate")
    await page.click("#save")
    await page.wait_for_selector("#saved")
    assert "by alice" in (await page.text_content("#saved") or "")
    await page.screenshot(path=shots("03-form-submitted"))

    # 4. A cross-site POST from another origin: refused with a readable page.
    evil_page_obj = await context.new_page()
    await evil_page_obj.goto(str(evil_server.make_url("/")))
    await evil_page_obj.wait_for_url(gw_url + "/hr/notes")
    assert await evil_page_obj.text_content("h1") == "403 Forbidden"
    assert "cross-site request refused" in (await evil_page_obj.content()).lower()
    await evil_page_obj.screenshot(path=shots("04-refused-cross-site-post"))
    await evil_page_obj.close()

    # 5. An open redirect through the login page: refused with a readable page.
    refused = await page.goto(gw_url + "/_pdgw/login?return_to=https%3A%2F%2Fevil.example%2F")
    assert refused is not None and refused.status == 400
    await page.screenshot(path=shots("05-refused-open-redirect"))

    # 6. A tampered session cookie: not a session; the browser is sent to log in again.
    cookies = await context.cookies(gw_url)
    session = next(c for c in cookies if c["name"] == "pdgw-session")
    tampered = {**session, "value": session["value"][:-6] + "AAAAAA"}
    other = await loopback_context(browser)
    await other.add_cookies([tampered])
    p2 = await other.new_page()
    await p2.goto(gw_url + "/hr/")
    assert p2.url.startswith(provider.issuer)
    await p2.screenshot(path=shots("06-tampered-cookie-asked-to-log-in"))
    await other.close()

    # 7. A forged login callback (a `state` this browser never got): a readable refusal.
    forged = await page.goto(gw_url + "/_pdgw/callback?code=stolen&state=forged")
    assert forged is not None and forged.status == 401
    assert "the login could not be completed" in (await page.content()).lower()
    await page.screenshot(path=shots("07-refused-forged-state"))

    # 8. The app's own fetch (XHR) with a revoked session gets 401, not a redirect.
    await page.goto(gw_url + "/hr/")  # the refusal page's CSP forbids scripts' requests
    assert await page.evaluate("fetch('/hr/').then(r => r.status)") == 200
    frank = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}
    async with (  # an operator revokes her sessions (9.2.7)
        aiohttp.ClientSession() as http,
        http.post(
            served.admin_url + "/admin/sessions/revoke",
            json={"user": "alice", "reason": "incident 12"},
            headers=frank,
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    await asyncio.sleep(0.4)  # the revocation list's poll interval here: 0.2 s
    assert await page.evaluate("fetch('/hr/').then(r => r.status)") == 401
    await page.goto(gw_url + "/hr/")  # a navigation logs in again (the provider remembers alice)
    await page.wait_for_url(gw_url + "/hr/")
    assert await page.text_content("#user") == "alice"

    # 9. Log out: here and at the provider; then asked to log in again.
    await page.goto(gw_url + "/hr/")
    await page.click("#logout")
    await page.wait_for_url(provider.issuer + "/**")
    await page.screenshot(path=shots("08-provider-logout"))
    await page.click("button[name=logout]")
    await page.wait_for_url(gw_url + "/_pdgw/logged-out")
    assert await page.text_content("h1") == "Logged out"
    await page.screenshot(path=shots("09-logged-out"))
    await page.goto(gw_url + "/hr/")
    assert page.url.startswith(provider.issuer)
    assert await page.locator('input[name="login"]').count() == 1
    await page.screenshot(path=shots("10-asked-to-log-in-again"))
    await context.close()

    records = spool_records(served.spool_dir)
    auth = [(r["event"], r["reason"]) for r in records if r["kind"] == "auth_event"]
    assert auth[0] == ("login", "")
    for expected in (
        ("login_failed", "open_redirect"),
        ("login_failed", "login_state_missing"),
        ("revoked", "session_revoked"),
        ("logout", ""),
    ):
        assert expected in auth, (expected, auth)
    denied = [
        (r["user"], r["reason"])
        for r in records
        if r["kind"] == "access" and r["decision"] == "deny"
    ]
    assert ("alice", "csrf_origin_mismatch") in denied
    sessions = [r["session"] for r in records if r["kind"] == "access" and r["user"] == "alice"]
    # Two logins (before and after the revocation), each followed through the trail by its hash.
    assert len(set(sessions)) == 2 and "" not in sessions
    logins = {r["session"] for r in records if r["kind"] == "auth_event" and r["event"] == "login"}
    assert set(sessions) == logins
