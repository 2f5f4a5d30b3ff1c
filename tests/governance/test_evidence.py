"""Evidence packs (9.1.9): a scripted period on chdb and on clickhouse-server — accesses, a
policy change, a subject block, subjects' requests, reads of the trail, an anomaly — made into a
pack by `pd-gateway evidence`, whose figures equal those counted here from the raw spool records;
the PDF renders; `evidence verify` passes, then fails on an edited pack and on a store changed
after the pack was made."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pypdf import PdfReader

from gateway.audit.events import CHAINED_KINDS
from gateway.audit.store import schema
from gateway.audit.store.base import ts_of
from gateway.audit.store.factory import open_store
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import POLICIES, ROOT, Keys, ServeFactory, Upstream, spool_records
from tests.stores import (
    ENGINES,
    chain_numbers,
    fresh_database,
    store_config,
    store_section,
    wait_for,
)

CHROMIUM = "/usr/bin/chromium"
MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")


async def _call(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, headers={"Authorization": f"Bearer {token}"}, json=body) as r,
    ):
        return r.status, await r.json()


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat(timespec="microseconds")


@pytest.mark.parametrize("kind", ENGINES)
async def test_an_evidence_pack_equals_the_figures_of_the_raw_records_and_verify_catches_changes(
    kind: str,
    request: pytest.FixtureRequest,
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is required (apt-get install -y chromium)")
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    section = store_section(
        kind, fresh_database(), chdb_dir=chdb_dir, server=ch_server if kind != "embedded" else None
    )
    store = open_store(store_config(section), apply_schema=True)
    request.addfinalizer(store.close)  # closed on failure too: no socket left for a later test
    gw = await serve_gateway(
        upstream.url,
        store=section,
        authz={
            "model": str(policies / "model.conf"),
            "policy": str(policies / "policy.csv"),
            "watch_interval_seconds": 0.2,
        },
        audit={"checkpoint_interval_seconds": 0.3},
        evidence={"alert_rules_file": str(ROOT / "deploy/prometheus/alerts.yml")},
    )
    home = gw.spool_dir.parent
    dpo = keys.token("dana", ["dpo"])
    await asyncio.sleep(0.5)  # a signed checkpoint before the period: verify is anchored on it
    start_us = time.time_ns() // 1000

    # The period: three reads allowed, one refused, a read of the trail, a policy change, a
    # destroy request (blocked at once, destroyed, closed) and an answer already overdue.
    for user, role, n in (("harriet", "hr_officer", 3), ("sven", "sales_manager", 1)):
        for _ in range(n):
            await _call("GET", gw.proxy_url + "/hr/employees/emp-5", keys.token(user, [role]))
    assert (await _call("GET", gw.admin_url + "/admin/subject-blocks", dpo))[0] == 200
    policy = policies / "policy.csv"
    policy.write_text(policy.read_text() + "p, accountant, crm, counterparty, export\n")
    reqs = gw.admin_url + "/admin/subject-requests"
    today = dt.datetime.now(MOSCOW).date()
    status, body = await _call(
        "POST", reqs, dpo, {"type": "destroy", "subject": "emp-5", "received": str(today)}
    )
    assert status == 200, body
    number = body["request_no"]
    act = {"what": "personnel file", "where": "hr", "by": "ivanov", "when": str(today)}
    status, body = await _call(
        "POST", f"{reqs}/{number}/close", dpo, {"outcome": "destroyed", "act": act, "unblock": True}
    )
    assert status == 200, body
    late = str(today - dt.timedelta(days=45))
    status, body = await _call(
        "POST", reqs, dpo, {"type": "access", "subject": "emp-6", "received": late, "ref": "L-1"}
    )
    assert status == 200, body
    await asyncio.to_thread(
        wait_for,
        lambda: any(
            r["kind"] == "permission_change" and r["change_kind"] == "rule_added"
            for r in spool_records(gw.spool_dir)
        ),
        10,
        "the policy change",
    )
    store.insert(  # as the detector writes one (gateway.governance.anomalies)
        schema.ANOMALIES,
        [
            {
                "anomaly_id": "an-test-1",
                "ts": ts_of(start_us),
                "ts_us": start_us,
                "detected_us": start_us,
                "instance": "gw-test",
                "kind": "off_hours",
                "user": "harriet",
                "job_function": "hr_officer",
                "window_start_us": start_us,
                "window_end_us": start_us + 1,
                "count": 3,
                "distinct_subjects": 1,
                "threshold": 0,
                "sample_request_ids": [],
                "batch_id": "an-test",
            }
        ],
        "an-test",
    )
    # Past the checkpoint interval: the period's last records under a checkpoint signed in it.
    await asyncio.sleep(0.8)
    end_us = time.time_ns() // 1000 + 1

    def shipped() -> bool:
        chained = [r["seq"] for r in spool_records(gw.spool_dir) if r["kind"] in CHAINED_KINDS]
        return set(chained) <= set(chain_numbers(store)) | set(_other_seqs(store))

    await asyncio.to_thread(wait_for, shipped, 30, "the period shipped")

    # The figures counted here from the raw records of the spool.
    records = spool_records(gw.spool_dir)
    inside = [
        r for r in records if start_us <= r.get("ts_us", r.get("window_start_us", 0)) < end_us
    ]
    accesses = [r for r in inside if r["kind"] == "access"]
    outcomes = {r["event_id"] for r in records if r["kind"] == "outcome"}
    expected_records = len([r for r in inside if r["kind"] in CHAINED_KINDS - {"outcome"}]) + sum(
        1 for r in accesses if r["event_id"] in outcomes
    )
    changes = [r for r in inside if r["kind"] == "permission_change"]
    reads = [r for r in accesses if r["category"] == "audit_log"]

    env = {**os.environ, "PDGW_TOKEN": dpo}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--gateway", gw.admin_url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=120,
        )

    out_dir = tmp_path / "pack"
    made = await asyncio.to_thread(
        cli, "evidence", "--from", _iso(start_us), "--to", _iso(end_us), "-o", str(out_dir)
    )
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "evidence.html",
        "evidence.json",
        "evidence.pdf",
        "evidence.sig.json",
    ]
    pack = json.loads((out_dir / "evidence.json").read_bytes())
    f = pack["figures"]
    reg = f["registration"]
    assert reg["totals"] == {
        "accesses": len(accesses),
        "allowed": sum(1 for r in accesses if r["decision"] == "allow"),
        "denied": sum(1 for r in accesses if r["decision"] == "deny"),
        "records": expected_records,
    }
    days = {
        dt.datetime.fromtimestamp(us / 1e6, MOSCOW).date().isoformat() for us in (start_us, end_us)
    }
    assert {(d["instance"], d["day"]) for d in reg["per_day"]} == {("gw-test", d) for d in days}
    assert reg["verify"]["ok"], reg["verify"]["problems"]
    (inst,) = reg["verify"]["instances"]
    assert inst["checkpoint_at_start"]["ts_us"] <= start_us and inst["anchored"]
    assert inst["checkpoints_in_period"] >= 1
    in_period = [r["seq"] for r in inside if r["kind"] in CHAINED_KINDS]
    assert inst["first_seq"] <= min(in_period) and inst["last_seq"] >= max(in_period)
    acc = f["access"]
    assert [c["kind"] for c in acc["permission_changes"]] == [r["change_kind"] for r in changes]
    assert acc["permission_changes_count"] == len(changes)
    grant = ("crm", "counterparty", "export")

    def holders(roster: list[dict[str, Any]]) -> set[str]:
        return {
            fn
            for r in roster
            if (r["system"], r["category"], r["action"]) == grant
            for fn in r["job_functions"]
        }

    assert "accountant" not in holders(acc["roster_at_start"])
    assert "accountant" in holders(acc["roster_at_end"])
    assert f["trail_reads"]["count"] == len(reads)
    assert [r["event_id"] for r in f["trail_reads"]["reads"]] == sorted(
        (r["event_id"] for r in reads),
        key=lambda e: next(r["ts_us"] for r in reads if r["event_id"] == e),
    )
    requests = {r["request"]: r for r in f["subject_requests"]["requests"]}
    assert requests[number]["standing"] == "met" and requests[number]["act"] == act
    assert [r["standing"] for r in requests.values() if r["ref"] == "L-1"] == ["overdue"]
    assert f["detection"]["anomalies_by_kind"] == [
        {"kind": "off_hours", "detected": 1, "reviewed": 0, "not_reviewed": 1}
    ]
    names = {r["alert"] for r in f["controls"]["alerts"]["rules"]}
    assert {"PDGatewaySubjectRequestOverdue", "PDGatewayAuditSpoolFailing"} <= names
    catalog = next(r for r in f["controls"]["routes"] if r["name"] == "crm-catalog")
    assert catalog["category"] == "none"

    # The PDF renders: pages, and its text is the pack's.
    pdf = PdfReader(str(out_dir / "evidence.pdf"))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    digest = json.loads((out_dir / "evidence.sig.json").read_text())["sha256"]
    assert len(pdf.pages) >= 2 and "Evidence pack" in text and "PDGatewayAuditSpoolFailing" in text
    assert digest in text.replace("\n", "")  # the footer of every page names the signed JSON

    pub = str(home / "checkpoint-key.pub")
    ok = await asyncio.to_thread(cli, "evidence", "verify", str(out_dir), "--public-key", pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "identical" in ok.stdout

    # The same period again: the same figures (the pack is deterministic).
    again = tmp_path / "again"
    made2 = await asyncio.to_thread(
        cli,
        "evidence",
        "--from",
        _iso(start_us),
        "--to",
        _iso(end_us),
        "-o",
        str(again),
        "--no-pdf",
    )
    assert made2.returncode == 0, made2.stderr
    assert json.loads((again / "evidence.json").read_bytes())["figures"] == f

    # An edited pack fails, however canonical the edit.
    edited = tmp_path / "edited"
    shutil.copytree(out_dir, edited)
    doc = json.loads((edited / "evidence.json").read_bytes())
    doc["figures"]["registration"]["totals"]["denied"] = 0
    from gateway.governance.evidence import canonical

    (edited / "evidence.json").write_bytes(canonical(doc))
    bad = await asyncio.to_thread(cli, "evidence", "verify", str(edited), "--public-key", pub)
    assert bad.returncode == 1 and "NOT verified" in bad.stdout and "signed" in bad.stdout

    # A store changed after the pack was made: an access row inserted inside the period.
    row = next(
        r
        for r in store.select(
            f"SELECT * FROM {store.database}.access_events WHERE ts_us >= %(a)s", {"a": start_us}
        )
    )
    store.insert(
        schema.ACCESS_EVENTS,
        [
            {
                **row,
                "event_id": "forged",
                "seq": 999_999,
                "ts": ts_of(start_us + 5),
                "ts_us": start_us + 5,
            }
        ],
        "forged",
    )
    changed = await asyncio.to_thread(cli, "evidence", "verify", str(out_dir), "--public-key", pub)
    assert changed.returncode == 1, changed.stdout
    assert "figures.registration.totals.accesses" in changed.stdout


def _other_seqs(store: Any) -> list[int]:
    db = store.database
    out: list[int] = []
    for table in ("anomaly_reviews", "subject_requests"):
        out += [int(r["n"]) for r in store.select(f"SELECT seq AS n FROM {db}.{table}")]
    return out
