"""The console with `serve --workers 2` (decision 025): the workers hold no store, so they
authenticate the browser and forward the console to their supervisor over loopback with the
caller sealed; the supervisor authorises, reads, records and answers. Its internal listener takes
nothing but a seal of this run's workers for that very request."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway.identity.tokens import Principal
from gateway.testing.chserver import free_port
from gateway.web.console.identity import CALLER_HEADER, seal
from gateway.web.trail import Caller
from tests.conftest import Keys, Upstream, spool_records
from tests.process import GatewayProcess, run_gateway
from tests.web.console.helpers import (
    CONSOLE,
    NAV,
    SUBJECT,
    Staff,
    console_oidc,
    console_records,
    session_cookie,
)

pytestmark = pytest.mark.slow


def _worker_env(gp: GatewayProcess) -> dict[str, str]:
    """A worker's environment (the test reads it as its owner could): the supervisor's
    console address and the run's secret."""
    children = Path(f"/proc/{gp.proc.pid}/task/{gp.proc.pid}/children").read_text().split()
    for pid in children:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
        if "PDGW_CONSOLE_URL" in env:
            return env
    raise AssertionError("no worker with the console's address")


@pytest.fixture
def workers(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> Iterator[tuple[GatewayProcess, Path]]:
    port = free_port()
    with run_gateway(
        tmp_path,
        keys,
        upstream.url,
        args=["--workers", "2"],
        proxy_port=port,
        oidc=console_oidc(tmp_path, port),
        console={},
        store={"kind": "embedded", "path": str(tmp_path / "chdb"), "batch_max_age_ms": 50},
    ) as gp:
        yield gp, tmp_path


async def test_workers_forward_the_console_to_the_supervisor_which_records_every_request(
    workers: tuple[GatewayProcess, Path], keys: Keys
) -> None:
    gp, home = workers
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        grace = Staff(gp.console, gp.console, session_cookie(home, "grace"), http)
        alice = Staff(gp.console, gp.console, session_cookie(home, "alice"), http)
        ids: list[str] = []
        status, body, resp = await grace.get(CONSOLE)
        assert status == 200 and "Audit console" in body
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        ids.append(resp.headers["X-Request-Id"])
        status, body, resp = await grace.get(CONSOLE + "health")
        assert status == 200 and "supervisor" in body and "gw-test-w1" in body
        ids.append(resp.headers["X-Request-Id"])
        status, _, resp = await grace.post(CONSOLE + "subject", {"subject": SUBJECT})
        assert status == 303 and SUBJECT not in resp.headers["Location"]
        ids.append(resp.headers["X-Request-Id"])
        page = resp.headers["Location"]
        status, _, resp = await grace.post(
            page + "/block", {"action": "block", "reason": "request #9", "confirm": "yes"}
        )
        assert status == 303
        ids.append(resp.headers["X-Request-Id"])
        # The supervisor answered once every worker had the block (6.5): in force on both.
        token = keys.token("alice", ["hr_officer"])
        for _ in range(6):
            async with http.get(
                gp.url + f"/hr/medical/{SUBJECT}", headers={"Authorization": f"Bearer {token}"}
            ) as r:
                assert r.status == 423
        status, body, resp = await grace.get(page + "?lang=ru")
        assert status == 200 and "Заблокировано" in body
        assert "pdgw-console-lang=ru" in resp.headers["Set-Cookie"]  # relayed by the worker
        ids.append(resp.headers["X-Request-Id"])
        # A query as a browser encodes it (`%2F` in the zone): the seal holds the target as the
        # supervisor receives it, byte for byte.
        search = URL(
            f"{gp.console}{CONSOLE}search?go=1&user=alice&tz=Europe%2FMoscow", encoded=True
        )
        async with http.get(search, headers={"Cookie": f"pdgw-session={grace.cookie}"}) as r:
            assert r.status == 200 and "Europe/Moscow" in await r.text()
            ids.append(r.headers["X-Request-Id"])
        status, _, resp = await alice.get(CONSOLE + "search")
        assert status == 403
        refused = resp.headers["X-Request-Id"]
        # A cross-site form: refused by the worker that served it, recorded there.
        status, _, resp = await grace.post(
            CONSOLE + "subject", {"subject": SUBJECT}, Origin="http://127.0.0.1:1"
        )
        assert status == 403
        csrf = resp.headers["X-Request-Id"]
        # Another origin making her browser fetch an export (the cookie rides it): refused by
        # the worker, which sees the browser's Sec-Fetch-*; navigating her there: sent home.
        from_elsewhere = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}
        status, _, resp = await grace.get(
            CONSOLE + "search/export?go=1&format=csv", **from_elsewhere
        )
        assert status == 403
        sent = resp.headers["X-Request-Id"]
        status, _, resp = await grace.get(
            CONSOLE + "search/export?go=1&format=csv", **{"Sec-Fetch-Site": "cross-site"}
        )
        assert (status, resp.headers["Location"]) == (303, CONSOLE)
        # The proxy port serves no console (decision 035): a navigation there is sent to it.
        async with http.get(gp.url + CONSOLE + "health", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == gp.console + CONSOLE + "health"
        # A client's own X-PD-Console-Caller is no credential: without a session, log in first.
        forged = {CALLER_HEADER: "eyJ1IjoiZ3JhY2UifQ.AAAA", "Accept": "application/json"}
        async with http.get(gp.console + CONSOLE + "search", headers=forged) as r:
            assert r.status == 401

    supervisor = {r["request_id"]: r for r in console_records(spool_records(gp.spool))}
    for rid in ids:
        assert supervisor[rid]["user"] == "grace" and supervisor[rid]["auth"] == "session"
    assert supervisor[refused]["decision"] == "deny" and supervisor[refused]["user"] == "alice"
    in_workers = [r for w in ("w0", "w1") for r in console_records(spool_records(gp.spool / w))]
    assert [(r["request_id"], r["user"], r["reason"]) for r in in_workers] == [
        (csrf, "grace", "csrf_origin_mismatch"),
        (sent, "grace", "csrf_cross_site"),
    ]


async def test_the_supervisors_console_listener_takes_only_its_workers_seal_for_that_request(
    workers: tuple[GatewayProcess, Path],
) -> None:
    gp, _ = workers
    env = _worker_env(gp)
    url, secret = env["PDGW_CONSOLE_URL"], bytes.fromhex(env["PDGW_CONSOLE_SECRET"])
    grace = Caller(Principal("grace", ("dpo",), expires_at=0), "session", "h", "10.0.0.9")
    target = CONSOLE + "search"

    def sealed(*, key: bytes = secret, path: str = target, now: float | None = None) -> str:
        return seal(key, grace, "rid-1", method="GET", target=path, body=b"", now=now)

    def get(headers: dict[str, str]) -> int:
        request = urllib.request.Request(url + target, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert get({CALLER_HEADER: sealed()}) == 200  # the workers' own seal works
    assert get({}) == 401
    assert get({CALLER_HEADER: sealed(key=b"x" * 32)}) == 401  # another run's secret
    assert get({CALLER_HEADER: sealed(now=time.time() - 600)}) == 401  # stale
    assert get({CALLER_HEADER: sealed(path=CONSOLE + "health")}) == 401  # another request
    assert get({CALLER_HEADER: sealed()[:-4] + "AAAA"}) == 401  # altered
    records = console_records(spool_records(gp.spool))
    assert [r["user"] for r in records if r["request_id"] == "rid-1"] == ["grace"]
    assert json.dumps(records).count('"rid-1"') == 1


async def test_the_console_port_serves_tls_and_the_language_cookie_keeps_secure(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """With TLS (decision 035: the console's own listener, the proxy's certificate): the session
    is the `__Host-` cookie the login set on the proxy's origin, and the language cookie the
    supervisor made on its plain loopback hop reaches the browser `Secure`, as the connection."""
    from gateway.core import tls
    from tests.certs import CA

    ca = CA(tmp_path, "org")
    pair = ca.issue("gateway", server=True)
    files = {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    port = free_port()
    oidc = console_oidc(tmp_path, port) | {
        "redirect_uri": f"https://127.0.0.1:{port}/_pdgw/callback"
    }
    with run_gateway(
        tmp_path,
        keys,
        upstream.url,
        proxy_port=port,
        listen={"proxy": {"tls": files}},
        oidc=oidc,
        console={"listen": {"tls": files}},
        store={"kind": "embedded", "path": str(tmp_path / "chdb")},
    ) as gp:
        assert gp.console.startswith("https://")
        cookie = {"Cookie": f"__Host-pdgw-session={session_cookie(tmp_path, 'grace')}"}
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            http.get(
                gp.console + CONSOLE + "health?lang=ru",
                headers={**NAV, **cookie},
                ssl=tls.client_context(ca.cert_file),
            ) as r,
        ):
            assert r.status == 200
            (lang,) = r.headers.getall("Set-Cookie")
            assert lang.startswith("pdgw-console-lang=ru;") and "; Secure" in lang
