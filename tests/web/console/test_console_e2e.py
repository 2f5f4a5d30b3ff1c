"""The console in a real browser (Debian's headless Chromium, driven by Playwright), logged in
through the real `oidc-provider`, against `pd-gateway serve` as a process with a real store (chdb
and clickhouse-server): the DPO and the security officer at each task, an HR officer and a sales
manager refused on every page, every page view in the trail, and `pd-gateway audit verify`
clean afterwards. Screenshots of every page are saved under var/screenshots/console/ (the path
is printed), and the subject report as a PDF, as it prints."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing.chserver import ClickHouseServer, free_port
from tests.conftest import ROOT, Keys, Upstream, gateway_records, run_cli
from tests.oidc_provider import Provider, oidc_section, provider_available, run_provider
from tests.process import GatewayProcess, run_gateway
from tests.stores import ENGINES, fresh_database, store_section
from tests.web.chromium import chromium, chromium_available, loopback_context
from tests.web.console.helpers import CONSOLE, SUBJECT, console_records

SHOTS = ROOT / "var" / "screenshots" / "console"
STAFF = {
    "grace": ["dpo"],
    "frank": ["security_officer"],
    "alice": ["hr_officer"],
    "carol": ["sales_manager"],
    "gina": ["dpo", "sales_manager"],  # a DPO who also works in the CRM
}
PORT = free_port()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(400),
    pytest.mark.skipif(
        not provider_available() or not chromium_available(),
        reason="needs chromium and deploy/oidc-demo's npm install (scripts/system-deps.sh)",
    ),
]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with run_provider(tmp_path_factory.mktemp("provider"), [PORT], users=STAFF) as p:
        yield p


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


class Screens:
    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder = folder
        self.n = 0
        print(f"\nscreenshots: {folder}")

    async def __call__(self, page: Any, name: str, *, full: bool = True) -> None:
        self.n += 1
        await page.screenshot(path=self.folder / f"{self.n:02d}-{name}.png", full_page=full)


class Recorder:
    """The request id of every console page and fragment the browser got (not static files)."""

    def __init__(self) -> None:
        self.ids: list[tuple[str, str]] = []  # (user, request id)

    def watch(self, page: Any, user: str) -> None:
        def seen(response: Any) -> None:
            url = response.url
            # Not the static files; not the redirect to log in (counted as an anonymous refusal).
            if CONSOLE in url and "/static/" not in url and response.status != 302:
                rid = response.headers.get("x-request-id")
                if rid:
                    self.ids.append((user, rid))

        page.on("response", seen)


async def login(browser: Any, gw: str, provider: Provider, user: str, rec: Recorder) -> Any:
    context = await loopback_context(browser, accept_downloads=True, locale="en-GB")
    page = await context.new_page()
    rec.watch(page, user)
    await page.goto(gw + CONSOLE)
    assert page.url.startswith(provider.issuer)  # the gateway's own login
    await page.fill('input[name="login"]', user)
    await page.fill('input[name="password"]', "any")
    await page.click("button[type=submit]")
    if await page.locator('input[name="prompt"][value="consent"]').count():
        await page.click("button[type=submit]")
    await page.wait_for_url(gw + CONSOLE)  # back where the login began
    return page


async def _seed(gw: GatewayProcess, keys: Keys) -> None:
    """What the trail holds before the console is opened: HR reads emp.1001's health certificate,
    an accountant is refused it, a sales manager reads a counterparty, someone probes."""
    calls = [
        ("alice", ["hr_officer"], f"/hr/medical/{SUBJECT}"),
        ("alice", ["hr_officer"], f"/hr/employees/{SUBJECT}"),
        ("bob", ["accountant"], f"/hr/medical/{SUBJECT}"),
        ("carol", ["sales_manager"], "/crm/counterparties/77"),
        ("dave", ["support_agent"], f"/hr/employees/{SUBJECT}"),
    ]
    async with aiohttp.ClientSession() as s:
        for user, roles, path in calls:
            headers = {"Authorization": f"Bearer {keys.token(user, roles)}"}
            async with s.get(gw.url + path, headers=headers) as r:
                await r.read()


def _serve(
    tmp_path: Path, keys: Keys, upstream: Upstream, provider: Provider, **overrides: Any
) -> contextlib.AbstractContextManager[GatewayProcess]:
    """`pd-gateway serve` as a process, its browser login at ``provider``."""
    return run_gateway(
        tmp_path,
        keys,
        upstream.url,
        proxy_port=PORT,
        oidc=oidc_section(tmp_path, provider, PORT),
        **overrides,
    )


async def _no_subject_in_url(page: Any) -> None:
    assert SUBJECT not in page.url
    hrefs = await page.eval_on_selector_all(
        "a[href], form[action]",
        "els => els.map(e => e.getAttribute('href') || e.getAttribute('action'))",
    )
    assert not [h for h in hrefs if SUBJECT in h], hrefs


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_dpo_and_the_security_officer_work_in_the_console_in_a_real_browser(
    engine: str,
    provider: Provider,
    browser: Any,
    keys: Keys,
    upstream: Upstream,
    tmp_path: Path,
    ch_server: ClickHouseServer,
) -> None:
    shots = Screens(SHOTS / engine)
    store = store_section(
        engine, fresh_database(), chdb_dir=tmp_path / "chdb", server=ch_server
    ) | {"batch_max_age_ms": 200}
    rec = Recorder()
    with _serve(
        tmp_path,
        keys,
        upstream,
        provider,
        console={"timezone": "Europe/Moscow"},
        store=store,
        # The detectors on 10-second windows, every day off-hours: findings within seconds.
        anomalies={
            "window_seconds": 10,
            "delay_seconds": 1,
            "interval_seconds": 1,
            "working_hours": {"days": []},
            "thresholds": {"default": {"refusals": 0}},
        },
    ) as gw:
        await _seed(gw, keys)
        gwu = gw.console  # the console's own origin (decision 035); the apps' is gw.url

        # --- grace, the DPO -----------------------------------------------------------------
        page = await login(browser, gwu, provider, "grace", rec)
        await shots(page, "home")
        # Search: the filters, a period in a zone, the results, a row's record, an export.
        await page.click("nav >> text=Search")
        await page.fill("#f-user", "alice")
        await page.select_option("#f-period", "week")
        await page.click("#search")
        await page.wait_for_selector("table.events tbody tr.allow")
        await shots(page, "search")
        await page.locator("table.events tbody a[href*='/events/']").first.click()
        await page.wait_for_selector("table.record")
        assert "Rule that decided" in await page.content()
        await shots(page, "event-record")
        await page.go_back()
        async with page.expect_download() as download:
            await page.click("#export-csv")
        rows = list(
            csv.DictReader(io.StringIO(Path(await (await download.value).path()).read_text()))
        )
        assert rows and {r["user"] for r in rows} == {"alice"}
        # A person's data: typed into a form, with the keyboard; the page has no id in its URL.
        await page.click("nav >> text=A person's data")
        await page.focus("#f-subject")
        await page.keyboard.type(SUBJECT)
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#block-status")
        await page.select_option("#f-category", "employee_health")
        await page.select_option("#f-period", "week")
        await page.click("#filter")
        await page.wait_for_selector("table.events")
        text = await page.inner_text("table.events")
        assert "alice" in text and "bob" in text and "hr_records" in text
        assert "allowed" in text and "refused" in text
        await _no_subject_in_url(page)
        await shots(page, "subject")
        # Block, with a reason and a confirmation; 6.5: refused at once through the proxy.
        await page.click("#block")
        await page.fill("#f-reason", "subject's written request #17")
        await shots(page, "block-confirm")
        await page.check("#f-confirm")
        await page.click("#confirm-change")
        await page.wait_for_selector("#block-status.blocked")
        await shots(page, "blocked")
        async with aiohttp.ClientSession() as s:
            headers = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
            async with s.get(f"{gw.url}/hr/medical/{SUBJECT}", headers=headers) as r:
                assert r.status == 423
        # The report, as it prints.
        await asyncio.sleep(0.6)  # the block shipped into the store (batch age 200 ms)
        await page.click("#report")
        await page.wait_for_selector("#verdict")
        assert "verified: the chain is intact" in await page.inner_text("#verdict")
        await shots(page, "report")
        await page.emulate_media(media="print")
        await shots(page, "report-print")
        await page.pdf(path=shots.folder / "subject-report.pdf")
        await page.emulate_media(media="screen")
        # An employee's activity; permissions and the roster.
        await page.click("nav >> text=An employee's activity")
        await page.fill("#f-user", "bob")
        await page.click("#show-activity")
        await page.wait_for_selector("#events-h")
        assert "no_matching_rule" in await page.content()
        await shots(page, "activity")
        await page.click("nav >> text=Permissions")
        await page.wait_for_selector("table.roster")
        assert "security_officer" in await page.inner_text("table.roster")
        await shots(page, "permissions")
        # The same page in Russian.
        await page.click("#lang-ru")
        await page.wait_for_selector("text=Права доступа и перечень допущенных")
        await shots(page, "permissions-ru")
        await page.click("#lang-en")
        await page.context.close()

        # --- frank, the security officer -------------------------------------------------------
        page = await login(browser, gwu, provider, "frank", rec)
        await page.click("nav >> text=Anomalies")
        # bob's and dave's refusals (threshold 0) make a probing finding; grace's block above may
        # make a permission-change one too, listed in any order, so the probing row is chosen.
        probing = "table.anomalies tbody tr[data-kind=probing]"
        for _ in range(60):  # the detectors judge 10-second windows a second after they end
            if await page.locator(probing).count():
                break
            await asyncio.sleep(1)
            await page.reload()
        assert await page.locator(probing).count()
        await page.wait_for_selector("#anomaly-chart canvas")  # drawn by the vendored uPlot
        await shots(page, "anomalies")
        row = page.locator(probing).first
        await row.locator("input[name=comment]").fill("checked with the HR lead: a late shift")
        await row.locator("button").click()
        await page.wait_for_selector("text=The review is recorded in the trail.")
        assert "a late shift" in await page.content()
        await shots(page, "anomaly-reviewed")
        await page.locator(probing).first.locator("a.behind").click()
        await page.wait_for_selector("table.events")
        assert "no_matching_rule" in await page.inner_text("table.events tbody")
        await shots(page, "anomaly-accesses-behind")
        # The subject's page: no block for a security officer, the report yes.
        await page.click("nav >> text=A person's data")
        await page.fill("#f-subject", SUBJECT)
        await page.click("#open-subject")
        await page.wait_for_selector("#block-status")
        assert await page.locator("#block").count() == 0
        assert "Blocked" in await page.inner_text("#block-status")
        # Trail health and a verification run in the background, followed as it runs.
        await page.click("nav >> text=Trail health")
        await page.wait_for_selector("text=Newest signed checkpoint")
        await shots(page, "health")
        await page.select_option("#v-period", "today")
        await page.click("#start-verify")
        await page.wait_for_selector("#verify-result", timeout=60_000)
        assert "The chain is intact" in await page.inner_text("#verify-result")
        await shots(page, "verify")
        await page.context.close()

        # --- alice and carol: refused on every page, each attempt recorded -------------------
        for user in ("alice", "carol"):
            page = await login(browser, gwu, provider, user, rec)
            assert "Refused" in await page.inner_text("h1")
            for path in (
                "search?go=1",
                "subject",
                "activity?user=bob",
                "permissions",
                "anomalies",
                "health",
            ):
                response = await page.goto(gwu + CONSOLE + path)
                assert response is not None and response.status == 403, (user, path)
            await shots(page, f"refused-{user}")
            await page.context.close()

        spool = gw.spool
        assert gw.kill(signal.SIGTERM) == 0  # drains, ships, signs the last checkpoint

    # 9.2.6: every page view and fragment the browsers got is an access record of the trail.
    records = {r["request_id"]: r for r in console_records(gateway_records(spool))}
    assert len(rec.ids) > 30
    for user, rid in rec.ids:
        assert records[rid]["user"] == user, (user, rid)
        expected = "deny" if user in ("alice", "carol") else "allow"
        assert records[rid]["decision"] == expected, records[rid]
    assert all(SUBJECT not in r["path"] for r in records.values())
    # The real CLI, on the stopped gateway's store: every chain intact.
    out = run_cli(
        "audit",
        "verify",
        "--config",
        str(tmp_path / "gateway.yaml"),
        "--public-key",
        str(tmp_path / "checkpoint-key.pub"),
        timeout=120,
    )
    assert out.returncode == 0 and "chain intact" in out.stdout, out.stdout + out.stderr


# What a script on a proxied app's page tries (a stored XSS in an HR page, a compromised
# upstream), run in that page by the browser: read the console, record a search as the person
# viewing the page, look a person up, through the console's origin and through the proxy's path.
_FROM_AN_APP_PAGE = """async (consoleOrigin) => {
  const search = "/_pdgw/console/search?go=1&user=alice";
  const out = {};
  async function attempt(name, url, init) {
    try {
      const r = await fetch(url, {credentials: "include", ...init});
      out[name] = r.type === "opaque" ? "unreadable" : "read " + r.status;
    } catch (e) {
      out[name] = "unreadable";  // a network error to the script: no CORS, or ORB
    }
  }
  await attempt("read", consoleOrigin + search, {});
  await attempt("blind", consoleOrigin + search, {mode: "no-cors"});
  await attempt("lookup", consoleOrigin + "/_pdgw/console/subject",
                {method: "POST", mode: "no-cors", body: new URLSearchParams({subject: "emp.1001"})});
  await attempt("own-path", search, {});
  return out;
}"""


async def test_a_script_on_a_proxied_page_can_neither_read_nor_drive_the_console(
    provider: Provider,
    browser: Any,
    keys: Keys,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    """Decision 035, in Chromium: a DPO is logged in to the console and opens a page of an app
    she works in — the same host, the proxy's port — where a script runs. The browser lets it
    read nothing of the console; what it makes the browser send with her cookie is refused and
    recorded so; where it sends her, she lands on the console's home page and nothing runs."""
    with _serve(
        tmp_path,
        keys,
        upstream,
        provider,
        console={},
        store={"kind": "embedded", "path": str(tmp_path / "chdb")},
    ) as gw:
        page = await login(browser, gw.console, provider, "gina", Recorder())
        # A page of the CRM she works in (the test's upstream answers JSON: a document all the
        # same, of the proxy's origin, and the script runs in it as in any page there).
        response = await page.goto(gw.url + "/crm/counterparties/77")
        assert response is not None and response.status == 200
        out = await page.evaluate(_FROM_AN_APP_PAGE, gw.console)
        # Nothing the console answered reached the script: another origin's answer without CORS
        # (the proxy's own path redirects to the console's origin). What was sent is below.
        assert out == dict.fromkeys(("read", "blind", "lookup", "own-path"), "unreadable"), out
        # The script sends her there (a link would too): she lands on the console's home page,
        # and no search runs on the address it chose.
        await page.evaluate(
            "c => { location.href = c + '/_pdgw/console/search?go=1&user=alice'; }", gw.console
        )
        await page.wait_for_url(gw.console + CONSOLE)
        assert "Audit console" in await page.content()
        # Her console, opened by her: still hers.
        response = await page.goto(gw.console + CONSOLE + "search?go=1&user=alice")
        assert response is not None and response.status == 200
        spool = gw.spool
        assert gw.kill(signal.SIGTERM) == 0

    records = [r for r in console_records(gateway_records(spool)) if r["user"] == "gina"]
    by_route: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        by_route.setdefault(r["route"], []).append((r["decision"], r["reason"]))
    # Every request the script made reached the console refused, with her as the principal; the
    # one search recorded as allowed is the one she opened.
    # Three searches (read, blind, through the proxy's path) and a look-up, each refused.
    assert sorted(by_route.pop("console:search")) == [
        ("allow", "rule"),
        *[("deny", "csrf_cross_site")] * 3,
    ]
    assert by_route.pop("console:subject") == [("deny", "csrf_cross_site")]
    # Where her login landed, and where the script's navigation did.
    assert by_route == {"console:home": [("allow", "rule")] * 2}
