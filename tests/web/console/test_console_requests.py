"""The register of subjects' requests and the evidence pack in the console, in Chromium (Debian's,
driven by Playwright) on the gateway's real listeners over chdb: the DPO opens a destroy request
(the subject is blocked at once), closes it with the act of destruction and ends the block; the
security officer may open an answer but not a blocking request; the evidence page shows a signed
pack and its download verifies. Staff are signed in with session cookies sealed by the gateway's
own codec (the provider's login is exercised by test_console_e2e.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing.chserver import free_port
from tests.conftest import ROOT, Keys, ServeFactory, Upstream, spool_records
from tests.stores import fresh_database, store_section
from tests.web.chromium import chromium, chromium_available, loopback_context
from tests.web.console.helpers import CONSOLE, SUBJECT, console_oidc, session_cookie

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium"),
]
MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def _page(browser: Any, url: str, home: Path, user: str) -> Any:
    context = await loopback_context(browser, accept_downloads=True, locale="en-GB")
    await context.add_cookies(
        [{"name": "pdgw-session", "value": session_cookie(home, user), "url": url}]
    )
    return await context.new_page()


async def test_the_dpo_opens_blocks_destroys_and_closes_a_request_in_the_browser(
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    chdb_dir: Path,
    browser: Any,
) -> None:
    section = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    port = free_port()
    key = tmp_path / "subject.key"
    key.write_text("5" * 64)  # subject ids as keyed hashes (decision 015)
    served = await serve_gateway(
        upstream.url,
        audit={"subject_key_file": str(key)},
        listen={"proxy": {"port": port}},
        oidc=console_oidc(tmp_path, port),
        console={"timezone": "Europe/Moscow"},
        store=section,
    )
    gw, con = served.proxy_url, served.console_url  # the console's own origin (decision 035)
    hr = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    seen: list[str] = []
    page = await _page(browser, gw, tmp_path, "grace")
    page.on("request", lambda r: seen.append(r.url))
    await page.goto(con + CONSOLE + "requests")
    assert await page.locator("h1").inner_text() == "Subjects' requests"
    await page.select_option("#f-type", "destroy")
    await page.fill("#f-subject", SUBJECT)
    await page.fill("#f-label", "DPO-2026-30")
    await page.fill("#f-ref", "in-7")
    await page.click("#open-request")
    await page.wait_for_url("**/requests/*?done=opened")
    assert "The subject is blocked." in await page.locator("p.done").inner_text()
    number = page.url.split("/requests/")[1].split("?")[0]
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw + f"/hr/employees/{SUBJECT}", headers=hr) as r,
    ):
        assert r.status == 423  # blocked at once (6.5)
    assert "open" in await page.locator("#standing").inner_text()

    # Destroyed: the act, and the block ended in the same step.
    today = dt.datetime.now(MOSCOW).date().isoformat()
    await page.select_option("#f-outcome", "destroyed")
    await page.fill("#f-act-what", "personnel file and its copies")
    await page.fill("#f-act-where", "hr system, archive")
    await page.fill("#f-act-by", "commission of 3")
    await page.fill("#f-act-when", today)
    await page.check("#f-unblock")
    await page.click("#close-request")
    await page.wait_for_url("**/requests/*?done=closed")
    assert await page.locator("#standing").inner_text() == "met"
    assert "personnel file and its copies" in await page.locator("#act").inner_text()
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw + f"/hr/employees/{SUBJECT}", headers=hr) as r,
    ):
        assert r.status == 200
    await page.goto(con + CONSOLE + "requests")
    row = await page.locator(f"#r-{number}").inner_text()
    assert "DPO-2026-30" in row and "met" in row and "h:" in row and SUBJECT not in row

    # In Russian, the same register.
    await page.goto(con + CONSOLE + "requests?lang=ru")
    assert await page.locator("h1").inner_text() == "Запросы субъектов"
    assert "срок соблюдён" in await page.locator(f"#r-{number}").inner_text()

    # The security officer may answer but not block (the policy: audit_log create, not block).
    frank = await _page(browser, gw, tmp_path, "frank")
    await frank.goto(con + CONSOLE + "requests")
    await frank.select_option("#f-type", "block")
    await frank.fill("#f-subject", "1002")
    await frank.click("#open-request")
    assert "Refused" in await frank.locator("h1").inner_text()
    await frank.goto(con + CONSOLE + "requests")
    await frank.select_option("#f-type", "access")
    await frank.fill("#f-subject", "1002")
    await frank.click("#open-request")
    await frank.wait_for_url("**/requests/*?done=opened")

    # The evidence page: yesterday's pack, shown and downloaded; the download verifies.
    yesterday = (dt.datetime.now(MOSCOW).date() - dt.timedelta(days=1)).isoformat()
    await page.goto(con + CONSOLE + "evidence?lang=en")
    await page.fill("#f-from", yesterday)
    await page.fill("#f-to", yesterday)
    await page.click("#make-evidence")
    await page.wait_for_selector("#evidence-meta")
    assert "yes" in await page.locator("#verified").inner_text()
    async with page.expect_download() as info:
        await page.click("#download-evidence")
    download = await (await info.value).path()
    bundle = json.loads(Path(download).read_text())
    assert bundle["pack"]["period"]["timezone"] == "Europe/Moscow"
    checked = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway",
            "evidence",
            "verify",
            str(download),
            "--offline",
            "--public-key",
            str(tmp_path / "gateway-0" / "checkpoint-key.pub"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert not [u for u in seen if SUBJECT in u]  # never in a URL (5.3)
    records = spool_records(served.spool_dir)
    states = [(r["state"], r["request_type"]) for r in records if r["kind"] == "subject_request"]
    assert states[:2] == [("opened", "destroy"), ("closed", "destroy")]
    assert ("opened", "access") in states
    asked = {
        (r["route"], r["action"], r["decision"])
        for r in records
        if r["kind"] == "access" and r["route"].startswith("console:request")
    }
    assert ("console:requests-open", "block", "allow") in asked  # grace's destroy request
    assert ("console:requests-open", "block", "deny") in asked  # frank's block request
    assert ("console:request-close", "block", "allow") in asked
