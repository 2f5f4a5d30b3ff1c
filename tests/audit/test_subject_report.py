"""The subject report (6.1.1, 6.3), rendered by a real browser (Debian's headless chromium): what
a DPO's reader sees — categories, purposes, job functions, refusals, consultations of the trail,
blocks, verification — and the same numbers for the same period."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import aiohttp
import pytest

from gateway.audit.store.factory import open_store
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import ROOT, Keys, ServeFactory, Upstream, spool_records
from tests.stores import count, fresh_database, store_config, store_section, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _visible_text(html: str) -> str:
    html = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


async def test_the_subject_report_shows_a_reader_what_was_done_with_the_data(
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is required (apt-get install -y chromium)")
    section = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    store = open_store(store_config(section), apply_schema=True)
    gw = await serve_gateway(upstream.url, store=section)
    dpo = keys.token("dana", ["dpo"])
    async with aiohttp.ClientSession() as s:
        for user, role, n in (("harriet", "hr_officer", 3), ("alan", "accountant", 1)):
            for _ in range(n):
                headers = {"Authorization": f"Bearer {keys.token(user, [role])}"}
                async with s.get(gw.proxy_url + "/hr/employees/emp-77", headers=headers) as r:
                    assert r.status == 200
        headers = {"Authorization": f"Bearer {keys.token('sven', ['sales_manager'])}"}
        async with s.get(gw.proxy_url + "/hr/employees/emp-77", headers=headers) as r:
            assert r.status == 403
        async with s.post(
            gw.admin_url + "/admin/subject-blocks",
            headers={"Authorization": f"Bearer {dpo}"},
            json={
                "subject": "emp-77",
                "action": "block",
                "reason": "objection of 2026-11-30",
                "label": "DPO-2026-114",
            },
        ) as r:
            assert r.status == 200
    wait_for(lambda: count(store, "subject_blocks") >= 1 and count(store) >= 5, 30, "shipping")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "audit", "subject-report", "emp-77", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PDGW_TOKEN": dpo},
        )

    html_file = tmp_path / "report.html"
    out = await asyncio.to_thread(
        cli, "--gateway", gw.admin_url, "-o", str(html_file), "--tz", "Europe/Moscow"
    )
    assert out.returncode == 0, out.stderr
    consulted = "category = 'audit_log'"
    wait_for(lambda: count(store, where=consulted) >= 2, 30, "the report's own record shipped")
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    await asyncio.sleep(1.1)  # the period ends in the past: nothing can join it any more
    runs = []
    for _ in range(2):  # the same period, a moment apart (and a consultation in between)
        out = await asyncio.to_thread(
            cli, "--gateway", gw.admin_url, "--format", "json", "--until", until
        )
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout))
    data = runs[0]
    assert data["verify"]["ok"], data["verify"]
    numbers = ("accesses", "refused", "consultations", "by", "refusals", "consulted", "blocks")
    assert {k: runs[1][k] for k in numbers} == {k: data[k] for k in numbers}
    # Reading the trail about the person is not an access to their data (9.2.6): the block and
    # the first report are consultations, listed apart, and counted in neither access number.
    assert data["by"]["category"] == {"employee": data["by"]["category"]["employee"]}
    assert data["by"]["category"]["employee"]["count"] == 4 and data["refused"] == 1
    assert data["accesses"] == 4 and data["consultations"] == 2
    assert [(c["user"], c["route"], c["decision"]) for c in data["consulted"]] == [
        ("dana", "admin:subject-blocks", "allow"),
        ("dana", "admin:audit/subject-report", "allow"),
    ]
    assert data["by"]["purpose"] == {"hr_records": data["by"]["purpose"]["hr_records"]}
    # A period into the future ends when the report is asked for: it never counts itself.
    wait_for(lambda: count(store, where=consulted) >= 4, 30, "the two JSON reports shipped")
    out = await asyncio.to_thread(
        cli, "--gateway", gw.admin_url, "--format", "json", "--until", "2099-01-01"
    )
    later = json.loads(out.stdout)
    assert later["period"]["until_us"] < dt.datetime(2099, 1, 1, tzinfo=dt.UTC).timestamp() * 1e6
    assert later["consultations"] == 4 and "the same --until gives the same numbers" in out.stderr

    shown = await asyncio.to_thread(
        subprocess.run,
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html_file.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = _visible_text(shown.stdout)
    assert "report for data subject emp-77" in text
    assert "Generated by dana" in text
    assert "verified: the chain is intact for this range" in text
    for seen in ("employee 4", "hr_records 4", "hr_officer 3", "accountant 1", "read 4"):
        assert seen in text, (seen, text)
    assert "sven sales_manager hr employee read no_matching_rule" in text
    assert "block dana DPO-2026-114 objection of 2026-11-30" in text
    assert "Times in Europe/Moscow, UTC+03:00" in text
    assert "Consultations of the audit trail 1" in text  # the block; not the report itself
    assert "dana dpo block or unblock allow" in text
    # 9.2.6: producing the report is itself in the trail, for the purpose of control.
    asked = [
        r for r in spool_records(gw.spool_dir) if r.get("route") == "admin:audit/subject-report"
    ]
    assert [(r["kind"], r["user"], r["purpose"]) for r in asked] == [
        ("access", "dana", "audit_control")
    ] * 4
    store.close()
