"""Browser login at the gateway against the real `oidc-provider` (npm), HTTP by hand: every step
and every refusal browser login must make, each checked in the trail (decision 014)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from gateway.identity.sessions import LoginState, Session, SessionCodec
from gateway.testing.chserver import free_port
from tests.conftest import Keys, ServeFactory, Upstream, gateway_records, run_cli, spool_records
from tests.oidc_provider import Provider, oidc_section, provider_available, run_provider
from tests.web.browserish import NAV, XHR, Browserish, MakeBrowser, browser_gateways

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not provider_available(), reason="npm install in deploy/oidc-demo (scripts/system-deps.sh)"
    ),
]

PORTS = [free_port() for _ in range(8)]  # gateways the provider's client may return to


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with run_provider(tmp_path_factory.mktemp("provider"), PORTS) as p:
        yield p


_ports = itertools.cycle(PORTS[:-1])  # the last: the second gateway process


@pytest.fixture
async def browser_gw(
    serve_gateway: ServeFactory, provider: Provider, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[MakeBrowser]:
    async with browser_gateways(serve_gateway, provider, upstream.url, tmp_path, _ports) as make:
        yield make


async def test_login_lands_on_the_page_first_asked_for_with_bearer_identity_headers(
    browser_gw: Any, upstream: Upstream
) -> None:
    gw = await browser_gw()
    cookie = await gw.login("alice")
    resp, body = await gw.get("/hr/employees/1001", {"pdgw-session": cookie, "app": "kept"})
    assert resp.status == 200, body
    seen = upstream.seen[-1]
    assert seen.headers["x-pd-user"] == ["alice"]
    assert seen.headers["x-pd-roles"] == ["hr_officer"]
    # Cookie hygiene: the app's own cookie passes, the gateway's never reaches the upstream.
    assert seen.headers["cookie"] == ["app=kept"]
    login = [e for e in gw.auth_events() if e["event"] == "login"]
    assert len(login) == 1 and login[0]["user"] == "alice" and len(login[0]["session"]) == 32
    assert gw.served.metric("pdgw_auth_events_total", {"event": "login", "reason": "-"}) == 1
    access = [r for r in gw.records("access") if r["decision"] == "allow"][-1]
    assert access["auth"] == "session" and access["session"] == login[0]["session"]
    trail = (gw.served.spool_dir).glob("*")
    for f in trail:
        if f.is_file():
            assert cookie.encode() not in f.read_bytes()


async def test_a_fetch_without_a_session_gets_401_and_a_navigation_a_redirect(
    browser_gw: Any,
) -> None:
    gw = await browser_gw()
    resp, body = await gw.get("/hr/employees/1001", headers=XHR)
    assert resp.status == 401 and json.loads(body)["error"] == "login_required"
    resp, _ = await gw.get("/hr/employees/1001")
    assert resp.status == 302
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["state"] and query["nonce"]
    assert "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Lax" in resp.headers["Set-Cookie"]


async def test_a_forged_state_is_refused_and_recorded(browser_gw: Any) -> None:
    gw = await browser_gw()
    authorize, login_cookie = await gw.start_login("/hr/employees/1001")
    callback = await gw.at_provider(authorize, "alice")
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    resp, body = await gw.get(forged.removeprefix(gw.url), {"pdgw-login": login_cookie})
    assert resp.status == 401 and b"<h1>" in body  # a readable page for a browser
    assert "pdgw-session" not in resp.cookies
    failed = [e for e in gw.auth_events() if e["event"] == "login_failed"]
    assert [e["reason"] for e in failed] == ["state_mismatch"]


async def test_a_replayed_state_is_refused_and_recorded(browser_gw: Any) -> None:
    gw = await browser_gw()
    authorize, login_cookie = await gw.start_login("/hr/employees/1001")
    callback = await gw.at_provider(authorize, "alice")
    path = callback.removeprefix(gw.url)
    first, _ = await gw.get(path, {"pdgw-login": login_cookie})
    assert first.status == 302
    again, body = await gw.get(path, {"pdgw-login": login_cookie}, headers=XHR)
    assert again.status == 401 and json.loads(body)["error"] == "login_failed"
    assert [e["reason"] for e in gw.auth_events() if e["event"] == "login_failed"] == [
        "state_replayed"
    ]


async def test_a_wrong_nonce_is_refused_and_recorded(browser_gw: Any) -> None:
    gw = await browser_gw()
    authorize, login_cookie = await gw.start_login("/hr/employees/1001")
    (real,) = gw.codec.open_logins(login_cookie)
    # The same state and verifier, another nonce: the ID token names the one sent to the provider.
    swapped = gw.codec.seal_logins(
        [LoginState(real.state, "another-nonce", real.code_verifier, real.return_to, time.time())]
    )
    callback = await gw.at_provider(authorize, "alice")
    resp, _ = await gw.get(callback.removeprefix(gw.url), {"pdgw-login": swapped})
    assert resp.status == 401
    assert [e["reason"] for e in gw.auth_events() if e["event"] == "login_failed"] == [
        "nonce_mismatch"
    ]


async def test_a_tampered_cookie_is_refused_and_counted_with_its_reason(browser_gw: Any) -> None:
    gw = await browser_gw(gateway={"audit": {"anonymous_window_seconds": 0.3}})
    cookie = await gw.login("alice")
    tampered = cookie[:40] + ("A" if cookie[40] != "A" else "B") + cookie[41:]
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": tampered}, headers=XHR)
    assert resp.status == 401
    assert resp.cookies["pdgw-session"]["max-age"] == "0"  # the browser drops it
    # Without a principal the refusal goes to the window's summary (decision 013); the
    # metric shows it at once.
    assert (
        gw.served.metric(
            "pdgw_denials_total", {"route": "hr-employees", "reason": "session_tampered"}
        )
        == 1
    )
    await asyncio.sleep(0.8)  # the window ends: its summary is a chained record of the trail
    (summary,) = [r for r in gw.records("refusal_summary") if r["reason"] == "session_tampered"]
    assert summary["route"] == "hr-employees" and summary["count"] == 1


async def test_an_expired_or_idle_cookie_is_refused_and_recorded(browser_gw: Any) -> None:
    gw = await browser_gw()
    now = time.time()
    old = Session("sid-1", "alice", ("hr_officer",), now - 9 * 3600, now - 10, now + 60, "rt")
    idle = Session("sid-2", "alice", ("hr_officer",), now - 3600, now - 3600, now + 60, "rt")
    for session in (old, idle):
        resp, _ = await gw.get(
            "/hr/employees/1001", {"pdgw-session": gw.codec.seal(session)}, headers=XHR
        )
        assert resp.status == 401
    expired = [(e["event"], e["reason"], e["user"]) for e in gw.auth_events()]
    assert expired == [
        ("expired", "session_expired", "alice"),
        ("expired", "session_idle", "alice"),
    ]


async def test_a_revoked_session_is_refused_by_a_second_gateway_process(
    browser_gw: Any, provider: Provider, keys: Keys, upstream: Upstream, tmp_path: Path
) -> None:
    from tests.process import run_gateway

    gw = await browser_gw()
    cookie = await gw.login("alice")
    other_home = tmp_path / "second"
    other_home.mkdir()
    port = PORTS[-1]
    oidc = oidc_section(tmp_path, provider, port)
    token_file = tmp_path / "frank.token"
    token_file.write_text(keys.token("frank", ["security_officer"]))
    with run_gateway(
        other_home,
        keys,
        upstream.url,
        oidc=oidc,
        audit={"spool_dir": str(other_home / "spool")},
        authz={"policy_admin_roles": ["security_officer"]},
    ) as second:
        async with aiohttp.ClientSession() as http:
            url = second.url + "/hr/employees/1001"
            h = {**XHR, "Cookie": f"pdgw-session={cookie}"}
            async with http.get(url, headers=h) as resp:
                assert resp.status == 200  # one key, any replica: the session works there
            done = await asyncio.to_thread(
                run_cli,
                *("session", "revoke", "alice", "--reason", "incident 7"),
                *("--gateway", second.admin, "--token-file", str(token_file)),
            )
            assert done.returncode == 0, done.stderr
            # 9.2.7: on record at once, not when the cookie next comes back.
            (change,) = [
                r for r in spool_records(other_home / "spool") if r["kind"] == "permission_change"
            ]
            assert (change["change_kind"], change["user"], change["actor"]) == (
                "sessions_revoked",
                "alice",
                "frank",
            )
            assert change["change_id"] in done.stdout
            await asyncio.sleep(0.5)  # the poll bound of this config (0.2 s)
            async with http.get(url, headers=h) as resp:
                assert resp.status == 401
            # ... and on the first gateway, which reads the same revocation list.
            resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
            assert resp.status == 401
        second.kill(15)
    revoked = [  # by the worker that served the cookie (decision 030)
        r
        for r in gateway_records(other_home / "spool")
        if r["kind"] == "auth_event" and r["event"] == "revoked"
    ]
    assert [(r["user"], r["reason"]) for r in revoked] == [("alice", "session_revoked")]
    assert "alice" not in (tmp_path / "revoked.jsonl").read_text()  # hashed at rest


async def test_revoke_user_ends_the_users_sessions_at_once_on_this_replica(
    make_gateway: Any, provider: Provider, upstream: Upstream, tmp_path: Path
) -> None:
    from gateway.runtime.app import GATEWAY

    gw = await make_gateway(upstream.url, oidc=oidc_section(tmp_path, provider, PORTS[0]))
    browser = gw.client.app[GATEWAY].serving.browser
    key = (tmp_path / "session.key").read_bytes()
    codec = SessionCodec(
        key, idle_timeout=900, absolute_timeout=28800, login_timeout=600, clock=time.time
    )
    now = time.time() - 1
    cookie = codec.seal(Session("sid", "alice", ("hr_officer",), now, now, now + 300, "rt"))
    headers = {**XHR, "Cookie": f"pdgw-session={cookie}"}
    assert (await gw.client.get("/hr/employees/1001", headers=headers)).status == 200
    await browser.revoke_user("alice", "subject_block")  # e.g. a block of the subject (6.5)
    assert (await gw.client.get("/hr/employees/1001", headers=headers)).status == 401
    events = [r for r in spool_records(gw.spool_dir) if r["kind"] == "auth_event"]
    assert [(e["event"], e["reason"]) for e in events] == [("revoked", "session_revoked")]


async def test_a_cross_site_post_is_refused_and_recorded_with_the_principal(
    browser_gw: Any, upstream: Upstream, keys: Keys
) -> None:
    gw = await browser_gw()
    cookie = await gw.login("alice")
    before = len(upstream.seen)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {},
    ):
        resp, body = await gw.request(
            "POST", "/hr/employees/1001", {"pdgw-session": cookie}, headers, data=b"x"
        )
        assert resp.status == 403, body
    assert len(upstream.seen) == before
    denied = [r for r in gw.records("access") if r["decision"] == "deny"]
    assert [(r["user"], r["auth"], r["reason"]) for r in denied] == [
        ("alice", "session", "csrf_origin_mismatch"),
        ("alice", "session", "csrf_cross_site"),
        ("alice", "session", "csrf_no_origin"),
    ]
    ok, _ = await gw.request(
        "POST", "/hr/employees/1001", {"pdgw-session": cookie}, {"Origin": gw.url}, data=b"x"
    )
    assert ok.status == 200
    # A bearer token is not ambient: no Origin needed, and the cookie is then ignored (one rule).
    bearer = {"Authorization": "Bearer " + keys.token("bob", ["accountant"])}
    resp, _ = await gw.request("POST", "/hr/employees/1001", {"pdgw-session": cookie}, bearer)
    assert resp.status == 403  # bob may not create: judged as bob, not as alice's session
    assert gw.records("access")[-1]["user"] == "bob"


async def test_an_open_redirect_return_path_is_refused(browser_gw: Any) -> None:
    gw = await browser_gw()
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/_pdgw/login"):
        resp, body = await gw.get(
            "/_pdgw/login?return_to=" + aiohttp.helpers.quote(target, safe="")
        )
        assert resp.status == 400, target
        assert b"must be a path on this site" in body
    reasons = [e["reason"] for e in gw.auth_events() if e["event"] == "login_failed"]
    assert reasons == ["open_redirect"] * 4
    resp, _ = await gw.get("/_pdgw/login?return_to=/hr/employees/1001")
    assert resp.status == 302


async def test_an_upstream_set_cookie_for_the_gateway_cookie_is_refused(
    browser_gw: Any, upstream_serving: Any
) -> None:
    async def plant(request: web.Request) -> web.Response:
        resp = web.Response(text="hi")
        resp.headers.add("Set-Cookie", "__HOST-pdgw-session=planted; Path=/")
        resp.headers.add("Set-Cookie", "pdgw-session=; Max-Age=0")
        return resp

    gw = await browser_gw(await upstream_serving(plant))
    cookie = await gw.login("alice")
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
    assert resp.status == 502
    assert all("planted" not in v for v in resp.headers.getall("Set-Cookie", []))
    outcomes = [r for r in gw.records("outcome")]
    assert outcomes[-1]["outcome"] == "upstream_set_gateway_cookie"


async def test_logout_ends_the_session_here_and_at_the_provider(browser_gw: Any) -> None:
    gw = await browser_gw()
    cookie = await gw.login("alice")
    resp, _ = await gw.request(
        "POST", "/_pdgw/logout", {"pdgw-session": cookie}, {"Origin": gw.url}
    )
    assert resp.status == 303
    assert resp.headers["Location"].startswith(gw.provider.issuer + "/session/end")
    assert resp.cookies["pdgw-session"]["max-age"] == "0"
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
    assert resp.status == 401  # the old cookie, kept by a copy, is revoked too
    events = [(e["event"], e["reason"]) for e in gw.auth_events()]
    assert events == [("login", ""), ("logout", ""), ("revoked", "session_revoked")]


async def test_a_session_is_refreshed_with_the_refresh_token(browser_gw: Any) -> None:
    gw = await browser_gw(refresh_interval_seconds=1)
    cookie = await gw.login("alice")
    await asyncio.sleep(1.2)
    resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
    assert resp.status == 200
    renewed = resp.cookies["pdgw-session"].value
    assert renewed != cookie
    assert [e["event"] for e in gw.auth_events()] == ["login", "refresh"]


async def test_a_role_change_seen_at_refresh_ends_every_session_of_the_user(
    browser_gw: Any, provider: Provider
) -> None:
    gw = await browser_gw(refresh_interval_seconds=1)
    cookie = await gw.login("mallory")
    try:
        provider.set_roles("mallory", ["support_agent", "hr_officer"])
        await asyncio.sleep(1.2)
        resp, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie}, headers=XHR)
        assert resp.status == 401  # the next login carries (and records) the new job functions
    finally:
        provider.set_roles("mallory", ["support_agent"])
    events = [(e["event"], e["reason"], e["user"]) for e in gw.auth_events()]
    assert events == [("login", "", "mallory"), ("revoked", "role_change", "mallory")]
    text = (gw.shared / "revoked.jsonl").read_text()
    (line,) = [json.loads(x) for x in text.splitlines()]
    assert (line["reason"], line["actor"]) == ("role_change", "gateway:gw-test")
    assert line["user_hash"].startswith("u:") and "mallory" not in text


async def test_with_tls_the_cookies_are_host_prefixed_and_secure(
    serve_gateway: ServeFactory, provider: Provider, upstream: Upstream, tmp_path: Path
) -> None:
    from gateway.core import tls
    from tests.certs import CA

    ca = CA(tmp_path, "org")
    pair = ca.issue("127.0.0.1", server=True)
    port = next(_ports)
    served = await serve_gateway(
        upstream.url,
        listen={
            "proxy": {"port": port, "tls": {"cert_file": str(pair.cert), "key_file": str(pair.key)}}
        },
        oidc=oidc_section(tmp_path, provider, port, scheme="https"),
    )
    trusting = tls.client_context(ca.cert_file)
    b = Browserish(served, provider, tmp_path)
    try:
        async with b.gateway.get(
            served.proxy_url + "/hr/employees/1001",
            headers=NAV,
            allow_redirects=False,
            ssl=trusting,
        ) as resp:
            assert resp.status == 302
            login_cookie = resp.cookies["__Host-pdgw-login"]
        assert login_cookie["secure"] and login_cookie["httponly"] and login_cookie["path"] == "/"
        assert not login_cookie["domain"]  # `__Host-`: this host only
        callback = await b.at_provider(resp.headers["Location"], "alice")
        async with b.gateway.get(
            callback,
            headers={**NAV, "Cookie": f"__Host-pdgw-login={login_cookie.value}"},
            allow_redirects=False,
            ssl=trusting,
        ) as resp:
            assert resp.status == 302
            session = resp.cookies["__Host-pdgw-session"]
        assert session["secure"] and session["samesite"] == "Lax"
        async with b.gateway.get(
            served.proxy_url + "/hr/employees/1001",
            headers={**XHR, "Cookie": f"__Host-pdgw-session={session.value}"},
            ssl=trusting,
        ) as resp:
            assert resp.status == 200
    finally:
        await b.close()


async def test_routes_outside_session_routes_take_bearer_tokens_only(
    browser_gw: Any, upstream: Upstream
) -> None:
    gw = await browser_gw(oidc={"session_routes": ["hr-employees"]})
    cookie = await gw.login("alice")
    ok, _ = await gw.get("/hr/employees/1001", {"pdgw-session": cookie})
    assert ok.status == 200
    # hr-medical is for API clients only: the cookie is not looked at, and a navigation is not
    # sent to log in (it would come back to the same refusal).
    resp, body = await gw.get("/hr/medical/1001", {"pdgw-session": cookie})
    assert resp.status == 401 and b"<h1>401" in body


async def test_logins_begun_in_several_tabs_each_complete(browser_gw: Any) -> None:
    gw = await browser_gw()
    first, cookie = await gw.start_login("/hr/employees/1001")
    resp, _ = await gw.get("/hr/medical/1001", {"pdgw-login": cookie})  # a second tab
    second, both = resp.headers["Location"], resp.cookies["pdgw-login"].value
    assert len(gw.codec.open_logins(both)) == 2
    cb_first = await gw.at_provider(first, "alice")
    resp, _ = await gw.get(cb_first.removeprefix(gw.url), {"pdgw-login": both})
    assert resp.status == 302 and resp.headers["Location"] == "/hr/employees/1001"
    left = resp.cookies["pdgw-login"].value  # the other tab's login stays under way
    (pending,) = gw.codec.open_logins(left)
    assert pending.return_to == "/hr/medical/1001"
    cb_second = await gw.at_provider(second, "alice")
    resp, _ = await gw.get(cb_second.removeprefix(gw.url), {"pdgw-login": left})
    assert resp.status == 302 and resp.headers["Location"] == "/hr/medical/1001"
    assert resp.cookies["pdgw-login"]["max-age"] == "0"


async def test_a_subject_block_on_a_user_ends_their_sessions(
    provider: Provider,
    upstream: Upstream,
    tmp_path: Path,
    keys: Any,
    aiohttp_client: Any,
) -> None:
    """A subject block (6.5) on a person who is also a user — the block names their
    `sub` — ends every browser session of theirs, like `pd-gateway session revoke`."""
    from prometheus_client import CollectorRegistry

    from gateway.config.load import load_config
    from gateway.runtime.app import build
    from tests.conftest import config_dict, write_config

    data = config_dict(tmp_path, upstream.url, oidc=oidc_section(tmp_path, provider, PORTS[0]))
    proxy_app, admin_app = build(
        load_config(write_config(tmp_path, data, keys)), CollectorRegistry()
    )
    proxy = await aiohttp_client(proxy_app)
    admin = await aiohttp_client(admin_app)
    key = (tmp_path / "session.key").read_bytes()
    codec = SessionCodec(
        key, idle_timeout=900, absolute_timeout=28800, login_timeout=600, clock=time.time
    )
    now = time.time() - 1
    cookie = codec.seal(Session("sid", "alice", ("hr_officer",), now, now, now + 300, "rt"))
    headers = {**XHR, "Cookie": f"pdgw-session={cookie}"}
    assert (await proxy.get("/hr/employees/1001", headers=headers)).status == 200
    dpo = {"Authorization": f"Bearer {keys.token('grace', ['dpo'])}"}
    body = {"subject": "alice", "action": "block", "reason": "her request of 2026-11-30"}
    assert (await admin.post("/admin/subject-blocks", json=body, headers=dpo)).status == 200
    assert (await proxy.get("/hr/employees/1001", headers=headers)).status == 401
