"""The console (decision 025) on the gateway's real listeners, over real stores (chdb in this
process and Debian's clickhouse-server): the DPO and the security officer at every task, an HR
officer and a sales manager refused on every page, and every request — allowed or refused — an
access record of the trail with the request id its response carried (9.2.6)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.audit.checkpoint import load_public_keys
from gateway.audit.store.base import AuditStore
from gateway.audit.store.factory import open_store
from gateway.audit.verify import verify_store
from gateway.config.model import AnomaliesConfig, Thresholds
from gateway.governance.anomalies import US, Detector
from gateway.testing.chserver import ClickHouseServer, free_port
from tests.conftest import Keys, Served, ServeFactory, Upstream, spool_records
from tests.stores import ENGINES, count, fresh_database, store_config, store_section, wait_for
from tests.web.console.helpers import (
    CONSOLE,
    SUBJECT,
    Staff,
    console_oidc,
    console_records,
    links,
    session_cookie,
)

pytestmark = pytest.mark.slow


@dataclass
class Console:
    served: Served
    store: AuditStore
    home: Path
    http: aiohttp.ClientSession
    ids: list[str]  # the X-Request-Id of every console response

    def staff(self, user: str) -> Staff:
        url = self.served.console_url  # the console's own origin (decision 035)
        return Staff(url, url, session_cookie(self.home, user), self.http)

    async def call(
        self, who: Staff, method: str, path: str, data: dict[str, str] | None = None, **h: str
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        if method == "POST":
            status, body, resp = await who.post(path, data or {}, **h)
        else:
            status, body, resp = await who.get(path, **h)
        self.ids.append(resp.headers["X-Request-Id"])
        return status, body, resp


@pytest.fixture(params=ENGINES)
async def console(
    request: pytest.FixtureRequest,
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> AsyncIterator[Console]:
    section = store_section(request.param, fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    store = open_store(store_config(section), apply_schema=True)
    port = free_port()
    served = await serve_gateway(
        upstream.url,
        listen={"proxy": {"port": port}},
        oidc=console_oidc(tmp_path, port),
        console={"timezone": "Europe/Moscow", "page_rows": 10},
        store=section,
    )
    # What the trail will hold: HR reads emp.1001's health data, an accountant is refused it.
    async with aiohttp.ClientSession() as s:
        for user, roles, path in [
            ("alice", ["hr_officer"], f"/hr/medical/{SUBJECT}"),
            ("alice", ["hr_officer"], f"/hr/employees/{SUBJECT}"),
            ("bob", ["accountant"], f"/hr/medical/{SUBJECT}"),
            ("carol", ["sales_manager"], "/crm/counterparties/77"),
        ] + [("alice", ["hr_officer"], f"/hr/employees/{n}") for n in range(2000, 2012)]:
            auth = {"Authorization": f"Bearer {keys.token(user, roles)}"}
            async with s.get(served.proxy_url + path, headers=auth) as r:
                await r.read()
    wait_for(lambda: count(store) >= 16, what="the seeded accesses in the store")
    # The detectors, as the gateway runs them, on a day where every hour is off-hours.
    cfg = AnomaliesConfig(work_days=(8,), thresholds={"default": Thresholds(refusals=0)})
    detector = Detector(cfg, store, "gw-test")
    width = cfg.window_seconds * US
    now = time.time_ns() // 1000
    for start in (now // width * width - width, now // width * width):
        detector.judge_window(start)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield Console(served, store, tmp_path, http, [])
    store.close()


def _no_subject_in(urls: list[str]) -> None:
    for url in urls:
        assert SUBJECT not in url, url


async def test_the_dpo_and_the_security_officer_do_every_task_and_every_request_is_recorded(
    console: Console, keys: Keys
) -> None:
    grace, frank = console.staff("grace"), console.staff("frank")
    c = console.call

    # Search: the filters of `audit search`, a time range in a zone, pages of 10, a row's record.
    status, body, resp = await c(grace, "GET", CONSOLE + "search?user=alice&period=week&go=1")
    assert status == 200 and body.count('<tr class="allow">') == 10
    assert "Next page" in body
    for name, value in resp.headers.items():
        if name == "Content-Security-Policy":
            assert "'unsafe-inline'" not in value and "script-src 'self'" in value
    assert resp.headers["Cache-Control"] == "no-store"
    following = next(u for u in links(body) if "after=" in u).replace("&amp;", "&")
    status, body, _ = await c(grace, "GET", following)
    assert status == 200 and body.count('<tr class="allow">') == 4  # 14 of alice's in all
    status, body, _ = await c(
        frank, "GET", CONSOLE + "search?category=employee_health&decision=deny&go=1&tz=UTC"
    )
    assert status == 200 and ">bob<" in body and ">alice<" not in body
    event = next(u for u in links(body) if "/events/" in u)
    status, body, _ = await c(frank, "GET", event.replace("&amp;", "&"))
    for shown in ("Rule that decided", "Policy version", "Chain position", "no_matching_rule"):
        assert shown in body
    # Export what a page shows, as CSV and JSON: recorded as an export (10.2).
    status, body, resp = await c(frank, "GET", CONSOLE + "search/export?user=bob&go=1&format=csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert status == 200 and [r["user"] for r in rows] == ["bob"] and rows[0]["decision"] == "deny"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    status, body, _ = await c(grace, "GET", CONSOLE + "search/export?user=bob&format=json")
    assert json.loads(body)[0]["purpose"] == "hr_records"

    # A person's data: the id goes in a POST body; the page is reached by a token.
    status, body, _ = await c(grace, "GET", CONSOLE + "subject")
    status, _, resp = await c(grace, "POST", CONSOLE + "subject", {"subject": SUBJECT})
    assert status == 303
    page = resp.headers["Location"]
    status, body, _ = await c(grace, "GET", page + "?category=employee_health&period=week")
    assert status == 200
    assert body.count('<tr class="allow">') == 1 and body.count('<tr class="deny">') == 1
    assert "hr_records" in body  # the purpose of each access
    assert "Not blocked." in body and 'id="block"' in body  # the dpo may block
    # Consultations of the trail about the person are not accesses to their data (9.2.6): the
    # accesses table leaves them out, a section of their own lists them (once shipped).
    wait_for(
        lambda: count(console.store, "access_events", "route = 'console:subject-lookup'") >= 1,
        what="the look-up in the store",
    )
    status, body, _ = await c(grace, "GET", page + "?period=week")
    assert body.count('<tr class="allow">') == 2 and body.count('<tr class="deny">') == 1
    assert '<tr class="consultation allow">' in body
    assert "the person&#39;s page opened (console)" in body
    status, body, _ = await c(grace, "GET", page + "?period=week&category=audit_log")
    assert '<tr class="allow">' in body and 'id="consulted"' not in body  # exactly those
    status, body, _ = await c(frank, "GET", page)
    assert status == 200 and 'id="block"' not in body  # a security officer may not
    # Block: a form, a confirmation, then in force; a security officer is refused.
    status, body, _ = await c(grace, "GET", page + "/block?action=block")
    assert status == 200 and 'name="confirm"' in body
    status, body, _ = await c(
        grace, "POST", page + "/block", {"action": "block", "reason": "request #17"}
    )
    assert status == 400 and "tick the box" in body  # not confirmed: nothing blocked
    status, body, _ = await c(
        frank, "POST", page + "/block", {"action": "block", "reason": "x-17", "confirm": "yes"}
    )
    assert status == 403
    status, body, _ = await c(
        grace,
        "POST",
        page + "/block",
        {"action": "block", "reason": "request #17", "label": f"case {SUBJECT}", "confirm": "yes"},
    )
    assert status == 400 and "must not contain the subject" in body  # 5.3: a label names a case
    status, body, _ = await c(
        grace, "POST", page + "/block", {"action": "unblock", "reason": "oops", "confirm": "yes"}
    )
    assert status == 409 and "not blocked" in body  # nothing to unblock
    status, _, resp = await c(
        grace,
        "POST",
        page + "/block",
        {
            "action": "block",
            "reason": "subject's request #17",
            "label": "DPO-17",
            "confirm": "yes",
        },
    )
    assert status == 303 and "done=blocked" in resp.headers["Location"]
    status, body, _ = await c(
        grace, "POST", page + "/block", {"action": "block", "reason": "again", "confirm": "yes"}
    )
    assert status == 409 and "already blocked" in body
    async with aiohttp.ClientSession() as s:
        token = keys.token("alice", ["hr_officer"])
        headers = {"Authorization": f"Bearer {token}"}
        async with s.get(f"{console.served.proxy_url}/hr/medical/{SUBJECT}", headers=headers) as r:
            assert r.status == 423  # 6.5: in force at once
    status, body, _ = await c(grace, "GET", resp.headers["Location"])
    assert "Blocked" in body and "subject&#39;s request #17" in body and "DPO-17" in body
    # The printable report, verified (from the store, once the block is shipped there): the
    # accesses to the person's data counted apart from the consultations of the trail.
    wait_for(lambda: count(console.store, "subject_blocks") == 1, what="the block in the store")
    wait_for(lambda: count(console.store, where="status = 423") == 1, what="the 423 in the store")
    status, body, _ = await c(grace, "GET", page + "/report?tz=Europe/Moscow")
    assert status == 200 and "verified: the chain is intact" in body, re.findall(
        r"<li><code>(.*?)</code>", body
    )
    assert "MSK" in body and "subject&#39;s request #17" in body and "DPO-17" in body
    # Alice's two reads, and the accountant's refusal and hers while blocked (423).
    assert '<td id="accesses">2</td>' in body and '<td id="refused">2</td>' in body
    consulted = int(re.findall(r'<td id="consultations">(\d+)</td>', body)[0])
    assert consulted >= 5 and "block or unblock (console)" in body
    assert "the beginning" in body  # the period: from the beginning to when it was asked
    status, _, resp = await c(
        grace,
        "POST",
        page + "/block",
        {"action": "unblock", "reason": "verified, corrected", "confirm": "yes"},
    )
    assert status == 303 and "done=unblocked" in resp.headers["Location"]

    # An employee's activity, permission changes and the roster.
    status, body, _ = await c(frank, "GET", CONSOLE + "activity?user=bob&period=30d")
    assert status == 200 and "no_matching_rule" in body
    status, body, _ = await c(grace, "GET", CONSOLE + "permissions?period=30d")
    assert status == 200 and "security_officer" in body and "employee_health" in body

    # Anomalies: the chart's data, links to the accesses behind each, a review.
    status, body, _ = await c(frank, "GET", CONSOLE + "anomalies?tz=UTC")
    assert status == 200 and 'data-chart="' in body and "off_hours" in body
    behind = [u.replace("&amp;", "&") for u in links(body) if "search?" in u and "go=1" in u]
    assert behind
    status, found, _ = await c(frank, "GET", behind[0])
    assert status == 200 and '<tr class="' in found
    review = next(u for u in links(body) if u.endswith("/review"))
    status, _, resp = await c(
        frank, "POST", review, {"comment": "night shift, agreed", "back": CONSOLE + "anomalies"}
    )
    assert status == 303
    status, body, _ = await c(frank, "GET", resp.headers["Location"])
    assert "night shift, agreed" in body and "The review is recorded" in body

    # Trail health, and `verify` of a period run in the background.
    status, body, _ = await c(grace, "GET", CONSOLE + "health")
    assert status == 200 and "gw-test" in body and "Newest signed checkpoint" in body
    status, _, resp = await c(grace, "POST", CONSOLE + "health/verify", {"period": "today"})
    assert status == 303
    job = resp.headers["Location"]
    for _ in range(200):
        status, body, _ = await c(grace, "GET", job + "?part=progress")
        if "hx-get" not in body:
            break
        await asyncio.sleep(0.1)
    assert "The chain is intact" in body, body

    # 9.2.6: every request above is an access record of the trail, with its request id; no
    # subject id is in any URL the console made or was asked for.
    records = console_records(spool_records(console.served.spool_dir))
    by_id = {r["request_id"]: r for r in records}
    assert set(console.ids) <= set(by_id)
    assert {by_id[i]["user"] for i in console.ids} == {"grace", "frank"}
    assert all(r["category"] == "audit_log" and r["auth"] == "session" for r in records)
    refused = [
        (r["user"], r["action"], r["status"], r["reason"])
        for r in records
        if r["decision"] == "deny"
    ]
    assert refused == [
        ("grace", "block", 400, "not_confirmed"),
        ("frank", "block", 403, "no_matching_rule"),
        ("grace", "block", 400, "bad_label"),
        ("grace", "block", 409, "not_blocked"),
        ("grace", "block", 409, "already_blocked"),
    ]
    assert all(r["purpose"] == "audit_control" for r in records)  # consultations (9.2.6)
    exports = [r for r in records if r["action"] == "export"]
    assert len(exports) == 2 and all("format=" in r["query"] for r in exports)
    blocks = [r for r in records if r["action"] == "block"]
    assert [r["subject_ids"] for r in blocks] == [[SUBJECT]] * 7
    _no_subject_in(grace.seen + frank.seen)
    assert all(SUBJECT not in r["path"] for r in records)
    # A block or unblock leaves what `subject block` leaves: its access (action block, begun and
    # completed), the subject_block record with the label, and a change of access rights.
    trail = spool_records(console.served.spool_dir)
    kinds = [r["kind"] for r in trail]
    assert kinds.count("anomaly_review") == 1 and kinds.count("subject_block") == 2
    made = [r for r in trail if r["kind"] == "subject_block"]
    assert [(b["action"], b["label"], b["actor"]) for b in made] == [
        ("block", "DPO-17", "grace"),
        ("unblock", "DPO-17", "grace"),
    ]
    changes = [r["change_kind"] for r in trail if r["kind"] == "permission_change"]
    assert [k for k in changes if k.startswith("subject_")] == [
        "subject_blocked",
        "subject_unblocked",
    ]
    done = {b["request_id"] for b in made}
    begun = [r for r in blocks if r["request_id"] in done]
    assert [(r["outcome"], r["decision"]) for r in begun] == [("pending", "allow")] * 2
    outcomes = {r["event_id"]: r for r in trail if r["kind"] == "outcome"}
    assert all(outcomes[r["event_id"]]["status"] == 303 for r in begun)

    # Shipped, the store's chains verify: the console's own records included.
    wait_for(lambda: count(console.store, "anomaly_reviews") == 1, what="the review in the store")
    keys_pub = load_public_keys([console.served.cfg.audit.checkpoint_key_file])
    assert verify_store(console.store, keys_pub).ok


ROUTES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "", {}),
    ("GET", "search?go=1", {}),
    ("GET", "search/export?format=csv", {}),
    ("GET", "events/0123456789abcdef0123456789abcdef", {}),
    ("GET", "subject", {}),
    ("POST", "subject", {"subject": SUBJECT}),
    ("GET", "activity?user=alice", {}),
    ("GET", "permissions", {}),
    ("GET", "anomalies", {}),
    ("POST", "anomalies/0123456789abcdef0123456789abcdef/review", {"comment": "seen it"}),
    ("GET", "health", {}),
    ("POST", "health/verify", {"period": "today"}),
    ("GET", "health/verify/0123456789abcdef", {}),
]


async def test_an_hr_officer_and_a_sales_manager_are_refused_on_every_page_and_recorded(
    console: Console,
) -> None:
    grace = console.staff("grace")
    _, _, resp = await grace.post(CONSOLE + "subject", {"subject": SUBJECT})
    token_page = resp.headers["Location"]  # a link a dpo had: no use to others
    pages = [*ROUTES]
    pages += [
        ("GET", token_page.removeprefix(CONSOLE), {}),
        ("GET", token_page.removeprefix(CONSOLE) + "/block?action=block", {}),
        ("POST", token_page.removeprefix(CONSOLE) + "/block", {"action": "block"}),
        ("GET", token_page.removeprefix(CONSOLE) + "/report", {}),
    ]
    tried: list[tuple[str, str]] = []
    for user in ("alice", "carol"):
        who = console.staff(user)
        for method, path, data in pages:
            status, body, resp = await console.call(who, method, CONSOLE + path, data)
            assert status == 403, (user, method, path, status)
            assert "Refused" in body and resp.headers["X-Request-Id"] in body
            tried.append((user, resp.headers["X-Request-Id"]))
    records = {r["request_id"]: r for r in console_records(spool_records(console.served.spool_dir))}
    for user, rid in tried:
        rec = records[rid]
        assert (rec["user"], rec["decision"], rec["status"]) == (user, "deny", 403)
        assert rec["reason"] == "no_matching_rule" and rec["auth"] == "session"
    # Nothing was read or changed for them: no block, no review, no verification.
    kinds = {r["kind"] for r in spool_records(console.served.spool_dir)}
    assert "subject_block" not in kinds and "anomaly_review" not in kinds


async def test_cross_site_forms_tokens_and_missing_sessions_are_refused(
    console: Console, keys: Keys
) -> None:
    grace = console.staff("grace")
    # A form posted from another origin, with grace's cookie: refused, recorded with her.
    status, _, resp = await console.call(
        grace,
        "POST",
        CONSOLE + "subject",
        {"subject": SUBJECT},
        Origin="http://127.0.0.1:1",
    )
    assert status == 403
    rid = resp.headers["X-Request-Id"]
    rec = next(r for r in spool_records(console.served.spool_dir) if r.get("request_id") == rid)
    assert (rec["user"], rec["reason"]) == ("grace", "csrf_origin_mismatch")
    # Another origin sending her browser to an export, an evidence pack, a search or a person's
    # page: SameSite=Lax lets the cookie ride a top-level navigation, and the work would be
    # recorded as hers (10.2). She is sent to the home page instead; nothing is read or recorded.
    pages = ("search/export?go=1&format=csv", "evidence/download?from=x", "evidence", "search")
    for page in pages:
        for site in ("cross-site", "same-site"):
            before = len(console_records(spool_records(console.served.spool_dir)))
            status, _, resp = await console.call(
                grace, "GET", CONSOLE + page, **{"Sec-Fetch-Site": site}
            )
            assert (status, resp.headers["Location"]) == (303, CONSOLE), (page, site)
            after = len(console_records(spool_records(console.served.spool_dir)))
            assert after == before, (page, site)
    status, _, _ = await console.call(grace, "GET", CONSOLE, **{"Sec-Fetch-Site": "cross-site"})
    assert status == 200  # the home page, which reads nothing of the trail
    # What is not a top-level navigation (a fetch, a frame, an image) or is a prefetch: refused,
    # recorded with her.
    for headers in (
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "iframe"},
        {"Sec-Fetch-Site": "same-site", "Sec-Purpose": "prefetch"},
        {"Sec-Fetch-Site": "same-origin", "Sec-Purpose": "prefetch;prerender"},
    ):
        status, _, resp = await console.call(
            grace, "GET", CONSOLE + "search/export?go=1&format=csv", **headers
        )
        assert status == 403, headers
        rid = resp.headers["X-Request-Id"]
        rec = next(r for r in spool_records(console.served.spool_dir) if r.get("request_id") == rid)
        assert (rec["user"], rec["reason"]) == ("grace", "csrf_cross_site")
    status, _, _ = await console.call(  # from the console's own page, or typed in: served
        grace, "GET", CONSOLE + "search/export?go=1&format=csv", **{"Sec-Fetch-Site": "same-origin"}
    )
    assert status == 200
    # A bearer token is not a console credential; no session, no console (an XHR: 401).
    async with console.http.get(
        console.served.console_url + CONSOLE + "search",
        headers={"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"},
    ) as r:
        assert r.status == 401
    async with console.http.get(
        console.served.console_url + CONSOLE + "search", headers={"Accept": "application/json"}
    ) as r:
        assert r.status == 401
    # A link with a token this process did not make.
    status, _, _ = await console.call(grace, "GET", CONSOLE + "subject/gAAAAforged")
    assert status == 404
    # Static files need no session and hold nothing of the trail.
    async with console.http.get(
        console.served.console_url + CONSOLE + "static/vendor/htmx.min.js"
    ) as r:
        assert r.status == 200 and "htmx" in await r.text()


async def test_the_console_is_an_origin_no_proxied_page_shares(console: Console) -> None:
    """Decision 035: the console answers on a listener of its own — the same host, so the login's
    cookie reaches it, another port, so a page of a proxied app is another origin to it. What a
    script on such a page can make the browser send with the DPO's cookie is refused and
    recorded as refused: never a reading of the trail recorded as hers, never a change."""
    served, grace = console.served, console.staff("grace")
    assert urlsplit(served.console_url).hostname == urlsplit(served.proxy_url).hostname
    assert urlsplit(served.console_url).port != served.proxy_port
    # The proxy listener serves no console: a browser sent there (a bookmark, the return from a
    # login) goes to the same page on the console's origin; any other method is not answered.
    status, _, resp = await grace.get(served.proxy_url + CONSOLE + "search?user=alice")
    assert status == 302
    assert resp.headers["Location"] == served.console_url + CONSOLE + "search?user=alice"
    status, _, _ = await grace.post(served.proxy_url + CONSOLE + "subject", {"subject": SUBJECT})
    assert status == 404
    # The console's listener reaches no upstream; its root leads to the console.
    status, _, _ = await grace.get(served.console_url + f"/hr/medical/{SUBJECT}")
    assert status == 404
    status, _, resp = await grace.get(served.console_url + "/")
    assert (status, resp.headers["Location"]) == (302, CONSOLE)

    async def refused(method: str, path: str, data: dict[str, str] | None, **h: str) -> str:
        status, _, resp = await console.call(grace, method, path, data, **h)
        assert status == 403, (method, path, h)
        rid = resp.headers["X-Request-Id"]
        rec = next(r for r in spool_records(served.spool_dir) if r.get("request_id") == rid)
        assert (rec["user"], rec["decision"]) == ("grace", "deny")
        return str(rec["reason"])

    # A form or fetch POST from a proxied app's page: its Origin is the proxy's.
    form = {"subject": SUBJECT}
    assert await refused("POST", CONSOLE + "subject", form, Origin=served.proxy_url) == (
        "csrf_origin_mismatch"
    )
    # A `fetch` (its answer unreadable there, but it would be recorded as her search) and a
    # frame (the console refuses to be shown in one, but the request would be made).
    from_app = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
    assert await refused("GET", CONSOLE + "search?user=alice&go=1", None, **from_app) == (
        "csrf_cross_site"
    )
    framed = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "iframe"}
    assert await refused("GET", CONSOLE + "health", None, **framed) == "csrf_cross_site"
    # A link on that page, followed (or a script setting `location`): she lands on the home page.
    status, _, resp = await console.call(
        grace, "GET", CONSOLE + "health", **{"Sec-Fetch-Site": "same-site"}
    )
    assert (status, resp.headers["Location"]) == (303, CONSOLE)
    # Addressed at another host than its own — a load balancer routing the apps' origin here by
    # path would put the console back in it — the console does not answer (421).
    async with console.http.get(
        served.console_url + CONSOLE, headers={"Host": urlsplit(served.proxy_url).netloc}
    ) as r:
        assert r.status == 421
    # Logging out from the console is a form of its own origin, refused from the proxied apps'.
    status, _, _ = await grace.post("/_pdgw/logout", {}, Origin=served.proxy_url)
    assert status == 403
    status, _, resp = await grace.post("/_pdgw/logout", {})
    assert status == 303 and "pdgw-session=;" in resp.headers.get("Set-Cookie", "")


async def test_the_pages_speak_russian_when_asked_or_when_the_browser_prefers_it(
    console: Console,
) -> None:
    frank = console.staff("frank")
    status, body, resp = await console.call(frank, "GET", CONSOLE + "search?lang=ru")
    assert status == 200 and "Поиск по журналу аудита" in body and 'lang="ru"' in body
    assert "pdgw-console-lang=ru" in resp.headers["Set-Cookie"]
    status, body, _ = await console.call(
        frank, "GET", CONSOLE + "health", **{"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}
    )
    assert "Состояние журнала" in body
    status, body, _ = await console.call(frank, "GET", CONSOLE + "health")
    assert "Trail health" in body
