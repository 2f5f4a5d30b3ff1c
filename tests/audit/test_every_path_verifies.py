"""Every record the gateway writes is verifiable, and holds no data subject's id in clear.

A real `pd-gateway serve` on the demo's config (its DEMO subject key, decision 015) is driven
through every admin endpoint (enumerated from the admin app's router: a new endpoint without a
driver fails this test), every page and form of the console (enumerated from its router the same
way; allowed, refused by the policy, refused for what was sent, cross-site, without a session),
every CLI command that talks to the gateway or the store (enumerated
from the argparse parser: a new command must be classified here), every proxy outcome (allowed,
403, 400, 404, 405, 413, 423, 499, 502, 503, 504, cut by the upstream or the client, a WebSocket
opened and closed or refused, a list
naming a blocked subject, break-glass, an IdP role change, a cross-site POST), browser login,
refresh, revocation and logout (Chromium and the real oidc-provider), blocks, policy changes and
audit queries. Then, with the gateway stopped, `pd-gateway audit verify` (the real CLI) finds
every chain intact (9.1.8, 9.2.7, decision 012) — on chdb and on Debian's clickhouse-server —
and none of the clear subject ids used is in the spool, the store's tables, the revocation
file, the block list, the operational log, the metrics or any address the console made or was
asked for (5.3); and the dashboards' aggregates (decision 026) count exactly what the trail holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.cli import build_parser
from gateway.config.load import load_config
from gateway.governance.subject_hash import SubjectHasher
from gateway.runtime.app import GATEWAY, build, console_app
from gateway.testing.chserver import ClickHouseServer, free_port
from gateway.web.console.app import STATIC
from tests.conftest import ROOT, Keys, demo_config_dict
from tests.oidc_provider import Provider, oidc_section, provider_available, run_provider
from tests.process import GatewayProcess, run_gateway
from tests.stores import ENGINES, fresh_database, store_section
from tests.web.chromium import CHROMIUM, chromium, loopback_context
from tests.web.console.helpers import CONSOLE, Staff, links, session_cookie
from tests.web.test_browser_e2e import _demo_upstream

pytestmark = pytest.mark.slow
PORTS = {engine: free_port() for engine in ENGINES}  # the provider's client may return to each

# Clear subject ids the scenario uses; none may be found at rest (distinct enough that no hash,
# time or request id contains one by chance).
A, M, B, L, C, P, R, N, K, Q = (f"subj-{c}7Qz" for c in "amblcprnkq")
IDS = (A, M, B, L, C, P, R, N, K, Q)

# CLI commands by what they talk to. Every leaf of `pd-gateway`'s parser is in exactly one.
GATEWAY_COMMANDS = {
    "audit who-accessed",
    "audit activity",
    "audit search",
    "audit export",
    "audit permissions",
    "audit subject-report",
    "subject block",
    "subject unblock",
    "subject status",
    "subject list",
    "subject request open",
    "subject request list",
    "subject request close",
    "session revoke",
    "evidence",
    "evidence verify",
}
STORE_COMMANDS = {"audit verify", "audit replay", "clickhouse init", "clickhouse retention"}
THE_GATEWAY = {"serve"}
LOCAL_COMMANDS = {  # neither the gateway nor the store: nothing they do reaches the trail
    "config check",
    "routes",
    "audit tail",
    "audit keygen",
    "token",
    "policy check",
    "policy test",
    "policy explain",
    "policy diff",
    "policy roster",
    "session keygen",
    "clickhouse ddl",
}


def cli_leaves() -> set[str]:
    leaves: set[str] = set()

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not all(a.required for a in subs):  # `evidence` runs on its own too
            leaves.add(path.strip())
        for a in subs:
            for name, child in a.choices.items():
                walk(child, f"{path} {name}")

    walk(build_parser(), "")
    return leaves


def test_every_cli_command_is_classified_by_what_it_talks_to() -> None:
    groups = [GATEWAY_COMMANDS, STORE_COMMANDS, THE_GATEWAY, LOCAL_COMMANDS]
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # none in two groups
    assert set().union(*groups) == cli_leaves(), "classify the new command above and drive it"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not provider_available() or not Path(CHROMIUM).exists():
        pytest.fail("needs chromium and deploy/oidc-demo's npm packages: scripts/system-deps.sh")
    # On `localhost`: its cookies apart from the gateway's on 127.0.0.1 (the logout's
    # Clear-Site-Data clears every cookie of the gateway's host, whatever the port).
    with run_provider(
        tmp_path_factory.mktemp("provider"), list(PORTS.values()), host="localhost"
    ) as p:
        yield p


@dataclass
class Run:
    """One gateway process under test and what the scenario did to it."""

    gw: GatewayProcess
    keys: Keys
    home: Path
    config: Path
    tokens: dict[str, Path] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)  # CLI commands driven

    async def cli(self, *args: str, as_user: str | None = None, code: int = 0) -> str:
        """`pd-gateway ARGS` as a user runs it (the token from a file); its stdout. Asserts the
        exit code; a command that talks to the gateway gets --gateway."""
        words = [a for a in args[:3] if not a.startswith("-")]
        leaf = next(
            (" ".join(words[:n]) for n in (3, 2, 1) if " ".join(words[:n]) in cli_leaves()),
            args[0],
        )
        self.ran.add(leaf)
        extra: list[str] = []
        if leaf in GATEWAY_COMMANDS:
            extra = ["--gateway", self.gw.admin]
        if as_user is not None:
            extra += ["--token-file", str(self.tokens[as_user])]
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", *args, *extra],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "TZ": "Europe/Moscow"},
            timeout=120,
        )
        assert out.returncode == code, (args, out.returncode, out.stdout, out.stderr)
        return out.stdout + out.stderr


def _headers(token: str | None, **more: str) -> dict[str, str]:
    return {**({"Authorization": f"Bearer {token}"} if token else {}), **more}


async def _call(
    s: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    async with s.request(method, URL(url, encoded=True), headers=_headers(token), **kw) as r:
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body


# -- the upstreams -------------------------------------------------------------------------------


async def crm_app(request: web.Request) -> web.StreamResponse:
    """Counterparties that answer the way upstreams do when things go wrong."""
    tail = request.path.rstrip("/").rsplit("/", 1)[-1]
    if request.path.startswith("/crm/live/"):  # a live view over a WebSocket (decision 024)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws
    if request.path.startswith("/crm/list"):
        return web.json_response({"items": [{"id": A}, {"id": B}]})
    if tail == "status503":
        return web.json_response({"busy": True}, status=503)
    if tail == "slow":
        await asyncio.sleep(3)  # past proxy.read_timeout_seconds: 504
        return web.json_response({})
    if tail in ("cut", "big"):
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = 4 << 20
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"x" * 65536)
            await asyncio.sleep(0.02)
            if tail == "cut":  # the upstream dies mid-body
                assert request.transport is not None
                request.transport.close()
                return resp
        return resp
    await request.read()
    return web.json_response({"ok": True})


# -- the scenario ----------------------------------------------------------------------------


async def drive_browser(run: Run, browser: Any, cookie_out: dict[str, str]) -> Any:
    """Login (the provider's page), a page, a refresh, then the context for later."""
    context = await loopback_context(browser)
    page = await context.new_page()
    await page.goto(run.gw.url + f"/hr/people/{P}")
    await page.fill('input[name="login"]', "alice")
    await page.fill('input[name="password"]', "any")
    await page.click("button[type=submit]")
    if await page.locator('input[name="prompt"][value="consent"]').count():
        await page.click("button[type=submit]")
    await page.wait_for_url(run.gw.url + f"/hr/people/{P}")
    assert await page.text_content("#user") == "alice"
    await asyncio.sleep(1.3)  # oidc.session.refresh_interval_seconds: 1
    await page.goto(run.gw.url + "/hr/")
    assert await page.text_content("#user") == "alice"
    cookie = next(c for c in await context.cookies(run.gw.url) if c["name"] == "pdgw-session")
    cookie_out["value"] = cookie["value"]
    return context, page


async def drive_proxy(run: Run, s: aiohttp.ClientSession, session_cookie: str) -> None:
    k, url = run.keys, run.gw.url
    alice = k.token("alice", ["hr_officer"])
    bob = k.token("bob", ["accountant"])
    carol = k.token("carol", ["sales_manager"])
    dave = k.token("dave", ["support_agent"])
    expected = [
        ("GET", f"/hr/employees/{A}", alice, {404}),  # allowed; the demo app has no such id
        ("GET", "/hr/employees/1001", alice, {200}),
        ("GET", f"/hr/medical/{M}", bob, {403}),
        ("GET", f"/hr/medical/{M}", alice, {404}),
        ("GET", "/hr/employees/x%2Fy", alice, {400}),
        ("GET", "/nowhere", alice, {404}),
        ("OPTIONS", f"/hr/employees/{A}", alice, {405}),  # the subject's position is hashed
        ("GET", f"/crm/down/{C}", carol, {502}),
        ("GET", "/crm/counterparties/status503", carol, {503}),
        ("GET", "/crm/counterparties/slow", carol, {504}),
        ("GET", f"/site/leads?lead_id={L}", dave, {200}),
        ("GET", f"/hr/employees/{A}", None, {401}),  # counted in the refusal summaries
        ("GET", f"/hr/employees/{A}", k.token("alice", ["hr_officer", "accountant"]), {404}),
        ("GET", "/crm/catalog", carol, {200}),  # no personal data: not recorded
    ]
    for method, path, token, statuses in expected:
        status, _ = await _call(s, method, url + path, token)
        assert status in statuses, (method, path, status)
    # A WebSocket: its access recorded before the upgrade, its outcome when it closes; and an
    # upgrade the policy refuses (decision 024).
    async with s.ws_connect(url + f"/crm/live/{C}", headers=_headers(carol)) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await s.ws_connect(url + f"/crm/live/{C}", headers=_headers(alice))
    assert refused.value.status == 403
    big = b"x" * 8192  # proxy.max_body_bytes: 4096
    status, _ = await _call(s, "POST", url + f"/crm/counterparties/{C}", carol, data=big)
    assert status == 413
    # A cross-site POST with the session cookie (CSRF): refused, recorded with the employee.
    async with s.post(
        url + "/hr/notes",
        data={"text": "planted"},
        headers={"Cookie": f"pdgw-session={session_cookie}", "Origin": "http://evil.invalid"},
    ) as r:
        assert r.status == 403
    # 499: a body that stops half-way and a client that hangs up.
    host = URL(url)
    with socket.create_connection((host.host or "", host.port or 80), timeout=5) as raw:
        raw.sendall(
            f"POST /crm/counterparties/{C} HTTP/1.1\r\nHost: {host.host}\r\n"
            f"Authorization: Bearer {carol}\r\nContent-Length: 3000\r\n\r\n".encode()
            + b"y" * 100
        )
        await asyncio.sleep(0.3)
    # The upstream cuts its response, and a client hangs up mid-response.
    with contextlib.suppress(aiohttp.ClientPayloadError):
        async with s.get(url + "/crm/counterparties/cut", headers=_headers(carol)) as r:
            assert r.status == 200
            await r.read()
    async with aiohttp.ClientSession() as once:
        r = await once.get(url + "/crm/counterparties/big", headers=_headers(carol))
        assert r.status == 200
        await r.content.read(65536)
        r.close()  # gone before the end
    await asyncio.sleep(0.5)


async def drive_admin(run: Run, s: aiohttp.ClientSession, routes: set[tuple[str, str]]) -> None:
    """A driver for each admin route that succeeds; then every /admin/ route refused once with a
    token (recorded) and once without (counted)."""
    k, admin = run.keys, run.gw.admin
    frank, grace = k.token("frank", ["security_officer"]), k.token("grace", ["dpo"])
    alice = k.token("alice", ["hr_officer"])
    policy = Path(load_config(run.config).authz.policy)
    original = policy.read_text()

    async def get_plain(path: str) -> None:
        status, _ = await _call(s, "GET", admin + path)
        assert status in (200, 404), path  # /checkpoint: 404 until the first one

    async def put_policy() -> None:
        added = original + "p, support_agent, hr, employee, read\n"
        body = {"policy": "p, nobody", "reason": "TICKET-9"}
        assert (await _call(s, "PUT", admin + "/admin/policy", frank, json=body))[0] == 400
        for text in (added, original):  # a rule added, then taken away again
            body = {"policy": text, "reason": "TICKET-9"}
            status, answer = await _call(s, "PUT", admin + "/admin/policy", frank, json=body)
            assert status == 200, answer
        run.gw.proc.send_signal(signal.SIGHUP)  # a reload from the files: nothing changed
        await asyncio.sleep(0.3)

    async def break_glass() -> None:
        body = {"minutes": 5, "justification": "incident 42: read the affected records"}
        status, _ = await _call(s, "POST", admin + "/admin/break-glass", frank, json=body)
        assert status == 200
        status, _ = await _call(s, "GET", run.gw.url + f"/hr/employees/{A}", frank)
        assert status == 404  # allowed by the break-glass session, recorded as such

    async def audit_queries() -> None:
        await run.cli("audit", "who-accessed", A, "--since", "1d", as_user="frank")
        out = await run.cli("audit", "who-accessed", R, "--consultations", as_user="grace")
        assert out.startswith("times in Europe/Moscow")
        await run.cli("audit", "activity", "alice", "--format", "ndjson", as_user="frank")
        out = await run.cli(
            "audit", "search", "--action", "block", "--format", "json", as_user="grace"
        )
        assert {r["action"] for r in json.loads(out)} == {"block"}
        export = run.home / "export.json"
        await run.cli(
            "audit",
            "export",
            "--system",
            "hr",
            "--format",
            "json",
            "-o",
            str(export),
            as_user="grace",
        )
        assert json.loads(export.read_text())
        await run.cli("audit", "permissions", as_user="frank")
        await run.cli("audit", "subject-report", R, "-o", str(run.home / "r.html"), as_user="grace")
        await run.cli("audit", "subject-report", A, "--format", "json", as_user="grace")
        # Refusals with words and a request id; an unusable id is refused before it is sent.
        out = await run.cli("audit", "who-accessed", A, as_user="alice", code=1)
        assert "403 forbidden" in out and "(request " in out
        out = await run.cli("audit", "who-accessed", "x" * 10_000, as_user="grace", code=2)
        assert "at most 256 characters" in out
        out = await run.cli("audit", "search", "--since", "1764800000", as_user="grace", code=2)
        assert "a bare number has no unit" in out
        status, body = await _call(s, "GET", admin + "/admin/audit/subjects/a%01b/events", grace)
        assert status == 400 and body["message"].startswith("subject: printable")

    async def blocks() -> None:
        await run.cli(
            "subject",
            "block",
            B,
            "--reason",
            "subject's request",
            "--label",
            "DPO-7",
            as_user="grace",
        )
        assert (await _call(s, "GET", run.gw.url + f"/hr/employees/{B}", alice))[0] == 423
        carol = k.token("carol", ["sales_manager"])
        with contextlib.suppress(aiohttp.ClientPayloadError):  # cut: it names B
            async with s.get(run.gw.url + "/crm/list", headers=_headers(carol)) as r:
                await r.read()
        out = await run.cli("subject", "block", B, "--reason", "again", as_user="grace", code=1)
        assert "already blocked" in out
        await run.cli("subject", "list", as_user="grace")

    async def block_status() -> None:
        out = await run.cli("subject", "status", B, as_user="grace")
        assert out.startswith(f"{B}: BLOCKED since")
        out = await run.cli(
            "subject", "unblock", N, "--reason", "mistyped", as_user="grace", code=1
        )
        assert "409 not_blocked" in out
        await run.cli("subject", "unblock", B, "--reason", "verified", as_user="grace")

    async def revoke() -> None:
        await run.cli("session", "revoke", "alice", "--reason", "incident 42", as_user="frank")

    async def list_blocks() -> None:
        await run.cli("subject", "list", as_user="frank")

    async def subject_requests() -> None:
        """The register (6.3, 6.5, 6.6, 7.3): a destroy request blocks Q at once, its report is
        issued against it, it is closed with the act and the block ends; refusals in words."""
        today = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=3))).date()
        opened = await run.cli(
            "subject", "request", "open", "--type", "destroy", "--subject", Q,
            "--received", str(today), "--label", "DPO-9", "--ref", "in-9", as_user="grace",
        )  # fmt: skip
        assert "blocked at once" in opened
        number = opened.split("request ", 1)[1].split(":", 1)[0]
        assert (await _call(s, "GET", run.gw.url + f"/hr/employees/{Q}", alice))[0] == 423
        out = await run.cli(
            "subject", "request", "open", "--type", "block", "--subject", Q,
            "--received", str(today), as_user="frank", code=1,
        )  # fmt: skip
        assert "403 forbidden" in out  # a blocking request is a block: not the officer's
        await run.cli(
            "audit", "subject-report", Q, "--request", number, "--format", "json", as_user="grace"
        )
        act = run.home / "act.yaml"
        act.write_text("what: personnel file\nwhere: hr\nby: commission\nwhen: 2026-12-01\n")
        out = await run.cli(
            "subject", "request", "close", number, "--outcome", "destroyed", as_user="grace", code=1
        )
        assert "act" in out and "(request " in out
        out = await run.cli(
            "subject", "request", "close", number, "--outcome", "destroyed", "--act", str(act),
            "--unblock", as_user="grace",
        )  # fmt: skip
        assert "on time" in out
        out = await run.cli("subject", "request", "list", as_user="grace")
        assert "DPO-9" in out and Q not in out
        await run.cli(
            "subject", "request", "list", "--overdue", "--format", "json", as_user="frank"
        )

    async def evidence() -> None:
        """A pack of yesterday (9.1.9), signed, printed to PDF, verified against the store."""
        pack = run.home / "pack"
        day = str(dt.date.today() - dt.timedelta(days=1))
        await run.cli("evidence", "--from", day, "--to", day, "-o", str(pack), as_user="grace")
        out = await run.cli(
            "evidence", "verify", str(pack), "--public-key", str(run.home / "checkpoint-key.pub"),
            as_user="grace",
        )  # fmt: skip
        assert "identical" in out

    # In the order they run (a block before its lookup; the revocation before the browser's end).
    drivers: list[tuple[tuple[str, str], Callable[[], Awaitable[None]]]] = [
        (("GET", "/metrics"), lambda: get_plain("/metrics")),
        (("GET", "/healthz"), lambda: get_plain("/healthz")),
        (("GET", "/readyz"), lambda: get_plain("/readyz")),
        (("GET", "/checkpoint"), lambda: get_plain("/checkpoint")),
        (("PUT", "/admin/policy"), put_policy),
        (("POST", "/admin/break-glass"), break_glass),
        (("POST", "/admin/subject-blocks"), blocks),
        (("GET", "/admin/subject-blocks"), list_blocks),
        (("POST", "/admin/subject-blocks/status"), block_status),
        (("POST", "/admin/sessions/revoke"), revoke),
        (("POST", "/admin/subject-requests"), subject_requests),
        (("GET", "/admin/subject-requests"), subject_requests),
        (("POST", "/admin/subject-requests/{request}/close"), subject_requests),
        (("POST", "/admin/evidence"), evidence),
        (("GET", "/admin/audit/events"), audit_queries),
        (("GET", "/admin/audit/subjects/{subject}/events"), audit_queries),
        (("GET", "/admin/audit/export"), audit_queries),
        (("GET", "/admin/audit/permissions"), audit_queries),
        (("GET", "/admin/audit/subjects/{subject}/report"), audit_queries),
    ]
    assert {route for route, _ in drivers} == routes, "a new admin endpoint needs a driver here"
    done: list[Callable[[], Awaitable[None]]] = []
    for _, driver in drivers:
        if driver not in done:  # one driver may serve several routes
            done.append(driver)
            await driver()
    for method, template in sorted(routes):
        if not template.startswith("/admin/"):
            continue
        path = admin + template.replace("{subject}", R).replace("{request}", "0000000a")
        status, _ = await _call(s, method, path, alice, json={})
        assert status in (400, 403), (method, template, status)  # recorded with alice
        status, _ = await _call(s, method, path, None, json={})
        assert status == 401, (method, template)  # counted (decision 013)


async def drive_console(run: Run, routes: set[tuple[str, str]]) -> list[str]:
    """A driver for each console page and form (decision 025), by the DPO and the security
    officer with their browser sessions (cookies sealed by the gateway's codec, as its login
    makes them); then every page refused by the policy (a sales manager: recorded), without a
    session (counted) and, for forms, cross-site (recorded). Returns every address asked for or
    answered: none may hold a subject id (5.3)."""
    home, url = run.home, run.gw.console  # the console's own origin (decision 035)
    before = dt.datetime.now(dt.UTC)
    await asyncio.sleep(1.5)  # a signed checkpoint past `before` (audit.checkpoint_interval: 1 s)
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        grace, frank, carol = (
            Staff(url, url, session_cookie(home, who), http) for who in ("grace", "frank", "carol")
        )
        found: dict[str, str] = {}  # what later drivers need: a token, an event id, a job

        async def ok(who: Staff, method: str, path: str, data: dict[str, str] | None = None,
                     expect: int = 200) -> tuple[str, Any]:  # fmt: skip
            if method == "POST":
                status, body, resp = await who.post(CONSOLE + path, data or {})
            else:
                status, body, resp = await who.get(CONSOLE + path)
            assert status == expect, (method, path, status, body[:300])
            return body, resp

        async def home_page() -> None:
            await ok(grace, "GET", "")

        async def search() -> None:
            body, _ = await ok(frank, "GET", "search?user=alice&period=today&go=1&tz=UTC")
            found["event"] = next(
                u.split("/events/")[1].split("?")[0] for u in links(body) if "/events/" in u
            )

        async def export() -> None:
            await ok(grace, "GET", "search/export?system=hr&go=1&format=csv")
            await ok(grace, "GET", "search/export?system=hr&go=1&format=json")

        async def event() -> None:
            await ok(frank, "GET", f"events/{found['event']}")
            await ok(frank, "GET", "events/0123456789abcdef0123456789abcdef", expect=404)

        async def subject_form() -> None:
            await ok(grace, "GET", "subject")

        async def lookup() -> None:
            for sid in (A, K):
                _, resp = await ok(grace, "POST", "subject", {"subject": sid}, expect=303)
                found[sid] = resp.headers["Location"].removeprefix(CONSOLE).split("?")[0]
            body, _ = await ok(grace, "POST", "subject", {"subject": "a\x01b"}, expect=400)
            assert "printable characters only" in body

        async def subject_page() -> None:
            body, _ = await ok(grace, "GET", found[A] + "?tz=UTC")
            assert 'id="consulted"' in body  # consultations apart from accesses (9.2.6)
            await ok(frank, "GET", found[A] + "?category=audit_log")
            await ok(grace, "GET", found[A] + "?since=yesterday", expect=400)

        async def block_form() -> None:
            await ok(grace, "GET", found[K] + "/block?action=block")

        async def block() -> None:
            change = {"action": "block", "reason": "subject's request", "confirm": "yes"}
            body, _ = await ok(
                grace, "POST", found[K] + "/block", {**change, "label": f"case {K}"}, expect=400
            )
            assert "must not contain the subject" in body  # the label is refused, not recorded
            await ok(grace, "POST", found[K] + "/block", {**change, "label": "DPO-K"}, expect=303)
            status, _ = await _call(
                http,
                "GET",
                run.gw.url + f"/hr/employees/{K}",
                run.keys.token("alice", ["hr_officer"]),
            )
            assert status == 423  # in force, as a block from the CLI is (6.5)
            body, _ = await ok(grace, "POST", found[K] + "/block", change, expect=409)
            assert "already blocked" in body
            unblock = {"action": "unblock", "reason": "verified", "confirm": "yes"}
            await ok(grace, "POST", found[K] + "/block", unblock, expect=303)
            await ok(grace, "POST", found[K] + "/block", unblock, expect=409)
            unconfirmed = {"action": "block", "reason": "subject's request"}
            await ok(grace, "POST", found[K] + "/block", unconfirmed, expect=400)
            await ok(frank, "POST", found[K] + "/block", change, expect=403)

        async def report() -> None:
            body, _ = await ok(grace, "GET", found[A] + "/report?tz=Europe/Moscow")
            assert 'id="consultations"' in body

        async def activity() -> None:
            await ok(frank, "GET", "activity?user=alice&period=30d")

        async def permissions() -> None:
            await ok(grace, "GET", "permissions?period=30d")

        async def anomalies() -> None:
            await ok(frank, "GET", "anomalies?tz=UTC")

        async def review() -> None:
            path = "anomalies/0123456789abcdef0123456789abcdef/review"
            await ok(frank, "POST", path, {"comment": "seen"}, expect=404)  # none detected
            await ok(frank, "POST", path, {"comment": "-"}, expect=400)

        async def health() -> None:
            await ok(grace, "GET", "health")

        async def verify() -> None:
            # Up to a moment before the console was used: every record of it is shipped by now
            # (a live trail's newest records may be in flight: begun, their rows not yet shipped).
            period = {"until": before.isoformat(timespec="seconds")}
            _, resp = await ok(grace, "POST", "health/verify", period, expect=303)
            found["job"] = resp.headers["Location"].removeprefix(CONSOLE)
            for _ in range(300):
                body, _ = await ok(grace, "GET", found["job"] + "?part=progress")
                if "hx-get" not in body:
                    break
                await asyncio.sleep(0.1)
            assert "The chain is intact" in body, body

        async def verify_status() -> None:
            await ok(grace, "GET", found["job"])
            await ok(grace, "GET", "health/verify/0123456789abcdef", expect=404)

        async def requests_page() -> None:
            await ok(grace, "GET", "requests")
            await ok(frank, "GET", "requests?overdue=1")

        async def request_open() -> None:
            form = {"type": "access", "subject": Q, "received": str(dt.date.today()), "ref": "r-1"}
            _, resp = await ok(grace, "POST", "requests", form, expect=303)
            found["request"] = resp.headers["Location"].removeprefix(CONSOLE).split("?")[0]
            await ok(grace, "POST", "requests", {**form, "received": "soon"}, expect=400)

        async def request_page() -> None:
            body, _ = await ok(grace, "GET", found["request"])
            assert "r-1" in body and Q not in body
            await ok(grace, "GET", "requests/0000000a", expect=404)

        async def request_close() -> None:
            close = found["request"] + "/close"
            await ok(grace, "POST", close, {"outcome": "destroyed"}, expect=400)
            await ok(grace, "POST", close, {"outcome": "answered"}, expect=303)
            await ok(grace, "POST", close, {"outcome": "answered"}, expect=409)

        async def evidence_page() -> None:
            await ok(grace, "GET", "evidence")
            day = str(dt.date.today() - dt.timedelta(days=1))
            body, _ = await ok(grace, "GET", f"evidence?from={day}&to={day}")
            assert 'id="verified"' in body
            await ok(grace, "GET", "evidence?from=x&to=y", expect=400)

        async def evidence_download() -> None:
            day = str(dt.date.today() - dt.timedelta(days=1))
            body, _ = await ok(grace, "GET", f"evidence/download?from={day}&to={day}")
            assert set(json.loads(body)) == {"pack", "signature"}

        drivers: list[tuple[tuple[str, str], Callable[[], Awaitable[None]]]] = [
            (("GET", ""), home_page),
            (("GET", "search"), search),
            (("GET", "search/export"), export),
            (("GET", "events/{event_id}"), event),
            (("GET", "subject"), subject_form),
            (("POST", "subject"), lookup),
            (("GET", "subject/{token}"), subject_page),
            (("GET", "subject/{token}/block"), block_form),
            (("POST", "subject/{token}/block"), block),
            (("GET", "subject/{token}/report"), report),
            (("GET", "activity"), activity),
            (("GET", "permissions"), permissions),
            (("GET", "anomalies"), anomalies),
            (("POST", "anomalies/{anomaly_id}/review"), review),
            (("GET", "health"), health),
            (("POST", "health/verify"), verify),
            (("GET", "health/verify/{job_id}"), verify_status),
            (("GET", "requests"), requests_page),
            (("POST", "requests"), request_open),
            (("GET", "requests/{request}"), request_page),
            (("POST", "requests/{request}/close"), request_close),
            (("GET", "evidence"), evidence_page),
            (("GET", "evidence/download"), evidence_download),
        ]
        driven = {(m, CONSOLE + p) for (m, p), _ in drivers}
        assert driven == routes, "a new console page needs a driver here"
        for _, driver in drivers:
            await driver()
        await ok(grace, "GET", "static/console.css")  # package data: no caller, no record
        await ok(grace, "GET", "nowhere", expect=404)  # recorded: the path as sent (no id in it)
        # Every page refused: by the policy for a sales manager (recorded), without a session
        # (counted with the anonymous refusals), and a cross-site form (recorded).
        for method, template in sorted(routes):
            path = (
                template.removeprefix(CONSOLE)
                .replace("{token}", found[A].removeprefix("subject/"))
                .replace("{event_id}", found["event"])
                .replace("{anomaly_id}", "0123456789abcdef0123456789abcdef")
                .replace("{job_id}", found["job"].rsplit("/", 1)[1])
                .replace("{request}", found["request"].rsplit("/", 1)[1])
            )
            data = {"subject": A, "comment": "seen", "action": "block", "reason": "x-y-z"}
            await ok(carol, method, path, data, expect=403)
            status, _ = await _call(http, method, url + CONSOLE + path, data=data)
            assert status == 401, (method, path, status)
            if method == "POST":
                status, _, _ = await grace.post(CONSOLE + path, data, Origin="http://evil.invalid")
                assert status == 403, (method, path, status)
        return grace.seen + frank.seen + carol.seen


async def end_browser(run: Run, context: Any, page: Any) -> None:
    """After `session revoke`: the old session is refused (recorded), a new login follows (the
    provider remembers alice), and a logout ends it."""
    await asyncio.sleep(0.5)  # the revocation list's poll interval here: 0.2 s
    await page.goto(run.gw.url + "/hr/")
    await page.wait_for_url(run.gw.url + "/hr/")
    await page.click("#logout")
    await page.wait_for_url(run_provider_issuer(run) + "/**")
    await page.click("button[name=logout]")
    await page.wait_for_url(run.gw.url + "/_pdgw/logged-out")
    await context.close()


def run_provider_issuer(run: Run) -> str:
    oidc = load_config(run.config).oidc
    assert oidc is not None
    return oidc.issuer


def _config(
    home: Path, engine: str, upstreams: dict[str, str], provider: Provider, server: Any
) -> dict[str, Any]:
    """The demo's config (its routes, policy admin roles and DEMO subject key), with this test's
    identity (its signing keys), ports, stores, upstreams, provider, a copy of the policies (the
    policy API writes its file) and a few routes for the outcomes upstreams produce."""
    data = demo_config_dict()
    del data["identity"], data["listen"]  # the test's token keys; the ports of run_gateway
    del data["audit"]["checkpoint_key_file"]  # a key made for this test (its .pub verifies)
    policies = home / "policies"
    shutil.copytree(ROOT / "policies", policies)
    data["authz"].update(model=str(policies / "model.conf"), policy=str(policies / "policy.csv"))
    data["instance_id"] = f"gw-{engine}"
    data["audit"].update(
        spool_dir=str(home / "spool"),
        checkpoint_interval_seconds=1,
        anonymous_window_seconds=1,
        blocks_poll_seconds=0.5,
    )
    section = store_section(engine, fresh_database(), chdb_dir=home / "chdb", server=server)
    data["store"] = section
    data["proxy"].update(max_body_bytes=4096, read_timeout_seconds=1)
    data["upstreams"] = upstreams
    data["oidc"] = oidc_section(home, provider, PORTS[engine], refresh_interval_seconds=1)
    data["routes"] += [
        {
            "name": "crm-list",
            "prefix": "/crm/list",
            "upstream": "crm",
            "system": "crm",
            "purpose": "contracts",
            "category": "counterparty",
            "response_subjects": {"pointer": "/items/*/id"},
        },
        {
            "name": "crm-live",
            "prefix": "/crm/live",
            "upstream": "crm",
            "system": "crm",
            "purpose": "contracts",
            "category": "counterparty",
            "subject": {"path": "/crm/live/{id}"},
            "websocket": True,
        },
        {
            "name": "crm-down",
            "prefix": "/crm/down",
            "upstream": "down",
            "system": "crm",
            "purpose": "contracts",
            "category": "counterparty",
            "subject": {"path": "/crm/down/{id}"},
        },
    ]
    return data


def _at_rest(run: Run, store_dump: str, metrics: str) -> dict[str, str]:
    """Everything the run left on disk and in the store, as text by where it came from."""
    texts = {"store": store_dump, "metrics": metrics}
    for f in sorted((run.home / "spool").rglob("*")):
        if f.is_file():
            texts[f"spool/{f.relative_to(run.home / 'spool')}"] = f.read_bytes().decode(
                "utf-8", "replace"
            )
    texts["revocation file"] = (run.home / "revoked.jsonl").read_text()
    texts["operational log"] = (run.home / "gateway.log").read_text()
    return texts


DUMP = """
import json, sys
from gateway.config.load import load_config
from gateway.audit.store.factory import open_store
store = open_store(load_config(sys.argv[1]).store, apply_schema=False)
db = store.database
for t in store.select("SELECT name FROM system.tables WHERE database = %(d)s", {"d": db}):
    for row in store.select(f"SELECT * FROM {db}.`{t['name']}`"):
        print(t["name"], json.dumps(row, default=str, ensure_ascii=False))
store.close()
"""


# The dashboards' aggregates (decision 026) against the trail they count, by the same keys: every
# access once (an allowed one is a row of two records), consultations under `audit_log`, each
# change of access rights once, every anonymous refusal.
AGGREGATES = """
import json, sys
from gateway.config.load import load_config
from gateway.audit.store.factory import open_store
store = open_store(load_config(sys.argv[1]).store, apply_schema=False)
db = store.database
dash = db + "_dashboards"
pairs = {
    "accesses": (
        f"SELECT system, category, action, decision, reason, status, count() AS n "
        f"FROM {db}.access_events GROUP BY system, category, action, decision, reason, status",
        f"SELECT system, category, action, decision, reason, status, sum(accesses) AS n "
        f"FROM {dash}.access_counts GROUP BY system, category, action, decision, reason, status",
    ),
    "job functions": (
        f"SELECT arrayJoin(if(empty(roles), ['-'], roles)) AS job_function, system, category, "
        f"decision, count() AS n FROM {db}.access_events "
        f"GROUP BY job_function, system, category, decision",
        f"SELECT job_function, system, category, decision, sum(accesses) AS n "
        f"FROM {dash}.job_function_counts GROUP BY job_function, system, category, decision",
    ),
    "anonymous refusals": (
        f"SELECT route, reason, status, sum(count) AS n FROM {db}.refusal_summaries "
        f"GROUP BY route, reason, status",
        f"SELECT route, reason, status, sum(refusals) AS n FROM {dash}.anonymous_refusal_counts "
        f"GROUP BY route, reason, status",
    ),
    "permission changes": (
        f"SELECT kind, source, uniqExact(change_id) AS n FROM {db}.permission_change_records "
        f"GROUP BY kind, source",
        f"SELECT kind, source, uniqExactMerge(changes) AS n "
        f"FROM {dash}.permission_change_counts GROUP BY kind, source",
    ),
}
out = {}
for name, (trail, counted) in pairs.items():
    out[name] = [
        sorted(json.dumps(r, default=str, sort_keys=True) for r in store.select(sql))
        for sql in (trail, counted)
    ]
print(json.dumps(out))
store.close()
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ENGINES)
async def test_every_path_leaves_a_verifiable_trail_with_no_subject_id_in_clear(
    engine: str,
    tmp_path: Path,
    keys: Keys,
    provider: Provider,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    ch_server: ClickHouseServer,
) -> None:
    demo = _demo_upstream()
    demo.EMPLOYEES[P] = {"id": P, "name": "Synthetic Person", "position": "Tester", "phone": "-"}
    hr = await aiohttp_server(demo.build_app())
    crm_web = web.Application()
    crm_web.router.add_route("*", "/{tail:.*}", crm_app)
    crm = await aiohttp_server(crm_web)
    upstreams = {
        "hr": str(hr.make_url("")).rstrip("/"),
        "crm": str(crm.make_url("")).rstrip("/"),
        "site": str(crm.make_url("")).rstrip("/"),
        "down": f"http://127.0.0.1:{free_port()}",  # nothing listens there: 502
    }
    data = _config(tmp_path, engine, upstreams, provider, ch_server)
    tokens: dict[str, Path] = {}
    for user, role in (("frank", "security_officer"), ("grace", "dpo"), ("alice", "hr_officer")):
        tokens[user] = tmp_path / f"{user}.token"
        tokens[user].write_text(keys.token(user, [role], ttl=3600))
    with run_gateway(
        tmp_path, keys, upstreams["hr"], proxy_port=PORTS[engine], env={"TZ": "UTC"}, **data
    ) as gw:
        run = Run(gw, keys, tmp_path, tmp_path / "gateway.yaml", tokens)
        proxy_app, admin_app = build(load_config(run.config))
        console_router = console_app(proxy_app[GATEWAY], None).router
        routes = {
            (r.method, r.resource.canonical)
            for r in admin_app.router.routes()
            if r.resource and r.method != "HEAD"
        }
        # The console's pages, from its router as mounted on its listener's app (its static
        # files excepted: package data, served without a caller and never recorded).
        console_routes = {
            (r.method, r.resource.canonical)
            for r in console_router.routes()
            if r.resource
            and r.method != "HEAD"
            and r.resource.canonical.startswith(CONSOLE)
            and r.resource.name != STATIC
        }
        assert len(console_routes) >= 17
        cookie: dict[str, str] = {}
        async with chromium() as browser:
            context, page = await drive_browser(run, browser, cookie)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
                await drive_proxy(run, s, cookie["value"])
                await drive_admin(run, s, routes)
                addresses = await drive_console(run, console_routes)
                await end_browser(run, context, page)
                async with s.get(gw.admin + "/metrics") as r:
                    metrics = await r.text()
        await asyncio.sleep(2)  # the last batches shipped, a checkpoint past the last record
        assert gw.kill(signal.SIGTERM) == 0  # drains, flushes, ships, signs the last head

    # The store's own commands, the gateway stopped (chdb: one process per data directory).
    cfg = str(run.config)
    await run.cli("clickhouse", "init", "--config", cfg)
    await run.cli("clickhouse", "retention", "--config", cfg, "--keep-days", "3650")
    await run.cli("audit", "replay", "--spool", str(tmp_path / "spool"), "--config", cfg)
    verified = await run.cli(
        "audit",
        "verify",
        "--config",
        cfg,
        "--public-key",
        str(tmp_path / "checkpoint-key.pub"),
        "--json",
    )
    report = json.loads(verified[: verified.rindex("}") + 1])
    assert report["ok"], report["problems"]
    # Two chains (decision 030): the supervisor's (the admin APIs, the console, changes) and
    # the worker's that served the requests; each whole from its first record.
    supervisor, worker = sorted(report["instances"], key=lambda i: i["instance"])
    assert worker["instance"] == supervisor["instance"] + "-w0"
    for instance in (supervisor, worker):
        assert instance["first_seq"] == 1 and instance["records"] == instance["last_seq"] > 0
    assert supervisor["records"] + worker["records"] > 100
    assert run.ran >= GATEWAY_COMMANDS | STORE_COMMANDS, "every such command driven"
    print(
        f"\n{engine}: audit verify: records #1-#{supervisor['last_seq']} (supervisor), "
        f"#1-#{worker['last_seq']} (w0), chains intact"
    )

    log = (tmp_path / "gateway.log").read_text()
    assert "outcome record without its access" not in log and "UnpairedRecord" not in log
    dump = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", DUMP, cfg],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    texts = _at_rest(run, dump.stdout, metrics)
    texts["the console's addresses"] = "\n".join(addresses)
    # What the trail holds of each id instead: its keyed hash (the scenario did record them).
    hasher = SubjectHasher.from_files(load_config(run.config).audit.subject_key_file)
    for sid in (A, M, B, L, C, P, R, K, Q):
        assert hasher.stored(sid) in texts["store"], sid
    found = {(sid, where) for sid in IDS for where, text in texts.items() if sid in text}
    assert found == set(), "clear subject ids at rest"
    print(
        f"{engine}: no clear subject id in {len(texts)} places ({sum(map(len, texts.values()))} characters)"
    )
    # The dashboards count what the trail holds, row for row (decision 026).
    counted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", AGGREGATES, cfg],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    for name, (trail, aggregated) in json.loads(counted.stdout).items():
        assert trail and aggregated == trail, name
    # Each kind of record the scenario meant to write is in the store.
    kinds = {
        "access_events": ("allow", "deny"),
        "refusal_summaries": ("admin:audit/subjects/{subject}/events",),
        "auth_events": ("login", "refresh", "revoked", "logout"),
        "subject_blocks": ("DPO-7", "DPO-K", "DPO-9"),
        "subject_requests": ("opened", "report_issued", "closed", "DPO-9"),
        "permission_change_records": (
            "subject_blocked",
            "sessions_revoked",
            "break_glass_started",
            "idp_roles_changed",
            "rule_added",
        ),
    }
    for method, template in console_routes:  # each page recorded, allowed and refused
        name = next(
            r.name
            for r in console_router.routes()
            if r.method == method and r.resource and r.resource.canonical == template
        )
        rows = [x for x in dump.stdout.splitlines() if f'"route": "{name}"' in x]
        assert any('"decision": "allow"' in x for x in rows), name
        assert any('"decision": "deny"' in x for x in rows), name
    for table, words in kinds.items():
        lines = [x for x in dump.stdout.splitlines() if x.startswith(table + " ")]
        for word in words:
            assert any(word in x for x in lines), (table, word)
    outcomes = {
        json.loads(x.split(" ", 1)[1])["outcome"]
        for x in dump.stdout.splitlines()
        if x.startswith("access_events ")
    }
    assert {
        "complete",
        "client_aborted",
        "subject_blocked",
        "upstream_unreachable",
        "upstream_timeout",
        "upstream_aborted",
    } <= outcomes, outcomes
    statuses = {
        int(json.loads(x.split(" ", 1)[1])["status"])
        for x in dump.stdout.splitlines()
        if x.startswith("access_events ")
    }
    assert {200, 400, 403, 404, 405, 409, 413, 423, 499, 502, 503, 504} <= statuses, statuses
