"""Subject blocking (6.5, 6.6): through the admin API, on the next request, on a second gateway
process within its bound, across a restart — real tokens, the shipped policy, real stores."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.runtime.app import GATEWAY
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import GatewayFactory, Keys, ServeFactory, Upstream, spool_records
from tests.process import run_gateway
from tests.stores import fresh_database, store_section

BOUND_SECONDS = 5.0  # audit.blocks_poll_seconds 0.5 + shipping (50 ms batches) + margin


async def _call(
    method: str, url: str, token: str | None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, headers=headers, json=body) as r,
    ):
        return r.status, await r.json()


async def test_a_block_refuses_the_next_request_except_for_verification_and_is_recorded(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url)
    hr = keys.token("harriet", ["hr_officer"])
    dpo = keys.token("dana", ["dpo"])
    blocks = gw.admin_url + "/admin/subject-blocks"
    assert (await _call("GET", gw.proxy_url + "/hr/employees/emp-9", hr))[0] == 200

    status, body = await _call(
        "POST",
        blocks,
        keys.token("sam", ["security_officer"]),
        {"subject": "emp-9", "action": "block", "reason": "request 17"},
    )
    assert (status, body["error"]) == (403, "forbidden")
    status, body = await _call("POST", blocks, dpo, {"subject": "emp-9", "action": "block"})
    assert (status, body["error"]) == (400, "bad_request") and body["message"].startswith("reason")
    status, body = await _call(
        "POST",
        blocks,
        dpo,
        {"subject": "emp-9", "action": "block", "reason": "subject's request 17"},
    )
    assert (status, body["result"]) == (200, "blocked")

    status, body = await _call("GET", gw.proxy_url + "/hr/employees/emp-9", hr)
    assert (status, body["error"]) == (423, "subject_blocked")
    # Whether a subject is blocked (has made a 6.5 request) is not told to a job function that
    # may not see the data at all: the decision comes before the block.
    sales = keys.token("sid", ["sales_manager"])
    status, body = await _call("GET", gw.proxy_url + "/hr/employees/emp-9", sales)
    assert (status, body["error"]) == (403, "forbidden")
    assert (await _call("GET", gw.proxy_url + "/hr/employees/emp-10", hr))[0] == 200
    # The dpo's verification is not refused by the block (the policy then decides: no read).
    status, body = await _call("GET", gw.proxy_url + "/hr/employees/emp-9", dpo)
    assert body["error"] == "forbidden"
    status, body = await _call("GET", blocks, dpo)
    assert [b["subject"] for b in body["blocks"]] == ["emp-9"]
    assert gw.metric("pdgw_subject_blocks_active") == 1

    status, body = await _call(
        "POST", blocks, dpo, {"subject": "emp-9", "action": "unblock", "reason": "verified, 17"}
    )
    assert body["result"] == "unblocked"
    assert (await _call("GET", gw.proxy_url + "/hr/employees/emp-9", hr))[0] == 200
    # Lifting a block that is not there is an error, not "unblocked" (the DPO mistyped the id).
    status, body = await _call(
        "POST", blocks, dpo, {"subject": "emp-9", "action": "unblock", "reason": "verified, 17"}
    )
    assert (status, body["error"]) == (409, "not_blocked") and body["request_id"]

    records = spool_records(gw.spool_dir)
    changes = [r for r in records if r["kind"] == "subject_block"]
    assert [(r["action"], r["subject"], r["actor"]) for r in changes] == [
        ("block", "emp-9", "dana"),
        ("unblock", "emp-9", "dana"),
    ]
    assert all("hash" in r and r["seq"] > 0 for r in changes)  # chained like every record
    refused = [r for r in records if r["kind"] == "access" and r["reason"] == "subject_blocked"]
    assert [(r["user"], r["status"], r["subject_ids"]) for r in refused] == [
        ("harriet", 423, ["emp-9"])
    ]
    asked = [r for r in records if r["kind"] == "access" and r["route"] == "admin:subject-blocks"]
    assert [(r["user"], r["decision"], r["status"], r["reason"]) for r in asked] == [
        ("sam", "deny", 403, "no_matching_rule"),
        ("dana", "deny", 400, "no_reason"),
        ("dana", "allow", 0, "rule"),  # the block: pending, then its outcome
        ("dana", "allow", 0, "rule"),  # GET: the list
        ("dana", "allow", 0, "rule"),  # the unblock
        ("dana", "deny", 409, "not_blocked"),
    ]
    # Each change is an access of action `block` (`audit search --action block`) and a change of
    # access rights (`audit permissions`, 9.2.7), with who, why and when.
    assert {r["action"] for r in asked} == {"block", "read"}
    outcomes = {r["event_id"]: r for r in records if r["kind"] == "outcome"}
    assert [outcomes[r["event_id"]]["status"] for r in asked if r["decision"] == "allow"] == [
        200
    ] * 3
    rights = [r for r in records if r["kind"] == "permission_change"]
    assert [(r["change_kind"], r["actor"], r["reason"]) for r in rights] == [
        ("subject_blocked", "dana", "subject's request 17"),
        ("subject_unblocked", "dana", "verified, 17"),
    ]


def _status(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _post(url: str, token: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(r.status)


async def test_a_block_reaches_a_second_gateway_process_within_its_bound_and_survives_restarts(
    tmp_path: Path, keys: Keys, upstream: Upstream, ch_server: ClickHouseServer, chdb_dir: Path
) -> None:
    # The upstream answers on this loop; the processes are driven from a thread.
    await asyncio.to_thread(_two_replicas, tmp_path, keys, upstream, ch_server, chdb_dir)


def _two_replicas(
    tmp_path: Path, keys: Keys, upstream: Upstream, ch_server: ClickHouseServer, chdb_dir: Path
) -> None:
    section = store_section("clickhouse", fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    audit = {"blocks_poll_seconds": 0.5}
    hr = keys.token("harriet", ["hr_officer"])
    dpo = keys.token("dana", ["dpo"])
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        run_gateway(a_dir, keys, upstream.url, store=section, audit=audit, instance_id="gw-a") as a,
        run_gateway(b_dir, keys, upstream.url, store=section, audit=audit, instance_id="gw-b") as b,
    ):
        assert _status(b.url + "/hr/employees/emp-5", hr) == 200
        body = {"subject": "emp-5", "action": "block", "reason": "subject's request 18"}
        assert _post(a.admin + "/admin/subject-blocks", dpo, body) == 200
        t0 = time.monotonic()
        assert _status(a.url + "/hr/employees/emp-5", hr) == 423  # at once where it was made
        while _status(b.url + "/hr/employees/emp-5", hr) != 423:
            assert time.monotonic() - t0 < BOUND_SECONDS, "the other replica never enforced it"
            time.sleep(0.05)
        took = time.monotonic() - t0
        print(f"block enforced by the second replica after {took:.2f} s")
        age = _metric(b.admin, "pdgw_subject_blocks_view_age_seconds")
        assert 0 <= age < 2.0  # the view is fresh and says so
        b.kill()
    assert took < BOUND_SECONDS
    # A fresh process (new spool, the same store) enforces the block from its first request.
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    with run_gateway(
        c_dir, keys, upstream.url, store=section, audit=audit, instance_id="gw-c"
    ) as c:
        assert _status(c.url + "/hr/employees/emp-5", hr) == 423
        assert _status(c.url + "/hr/employees/emp-6", hr) == 200


def _metric(admin: str, name: str, worker: str = "w0") -> float:
    """A gauge of one process of the gateway (default: the worker that serves, which enforces
    the blocks it reads from its supervisor's view)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(admin + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {"worker": worker}:
                return float(sample.value)
    raise AssertionError(f"no {name} of {worker}")


def subject_hasher(gw: Any) -> Any:
    from gateway.governance.subject_hash import SubjectHasher

    return SubjectHasher.from_files(gw.cfg.audit.subject_key_file)


async def test_cli_blocks_looks_up_lists_and_unblocks_without_the_dpo_reading_a_hash(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    key = tmp_path / "subject.key"
    key.write_bytes(os.urandom(32).hex().encode())
    gw = await serve_gateway(upstream.url, audit={"subject_key_file": str(key)})
    token = keys.token("dana", ["dpo"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "subject", *args, "--gateway", gw.admin_url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PDGW_TOKEN": token},
        )

    out = await asyncio.to_thread(
        cli, "block", "emp-3", "--reason", "subject's request 19", "--label", "DPO-19"
    )
    assert out.returncode == 0 and out.stdout.startswith("emp-3: blocked"), out.stderr
    out = await asyncio.to_thread(cli, "block", "emp-3", "--reason", "again", "--label", "x")
    assert out.returncode == 1 and "already blocked" in out.stderr and "(request " in out.stderr
    out = await asyncio.to_thread(cli, "list", "--tz", "UTC")
    assert out.stdout.splitlines()[0] == "times in UTC, UTC+00:00"
    assert "DPO-19" in out.stdout and "subject's request 19" in out.stdout
    stored = subject_hasher(gw).stored("emp-3")
    assert stored.startswith("h:") and len(stored) == 43 and stored in out.stdout  # whole
    assert "emp-3" not in out.stdout  # the trail keeps only the hash; the label names the case
    out = await asyncio.to_thread(cli, "status", "emp-3", "--tz", "UTC")
    first, *rest = out.stdout.splitlines()
    assert first.startswith("emp-3: BLOCKED since ") and first.endswith("(UTC, UTC+00:00) by dana")
    assert "  reason: subject's request 19" in rest and "  label:  DPO-19" in rest
    out = await asyncio.to_thread(cli, "unblock", "emp-3", "--reason", "verified")
    assert out.stdout.startswith("emp-3: unblocked")
    out = await asyncio.to_thread(cli, "unblock", "emp-3", "--reason", "verified")
    assert out.returncode == 1 and "409 not_blocked" in out.stderr and "(request " in out.stderr
    out = await asyncio.to_thread(cli, "status", "emp-3")
    assert out.stdout.startswith("emp-3: not blocked")
    assert "block" in out.stdout and "unblock" in out.stdout  # the history
    # A label that names the person is refused: it is kept as written (5.3).
    out = await asyncio.to_thread(
        cli, "block", "emp-3", "--reason", "request 20", "--label", "emp-3's request"
    )
    assert out.returncode == 1 and "must not contain the subject's id" in out.stderr
    # An id no business system has (10 kB) is refused with words, before anything is sent.
    out = await asyncio.to_thread(cli, "status", "x" * 10_000)
    assert out.returncode == 2 and "at most 256 characters" in out.stderr
    assert token not in out.stdout + out.stderr


async def test_a_fresh_store_is_migrated_before_the_first_blocks_are_read(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    chdb_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway on an empty embedded store reads its subject blocks (6.5: before the first
    request) from a store whose schema is in place: no "store not readable" warning and no
    traceback in the operational log (it read the store before its tables existed)."""
    store = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    with caplog.at_level(logging.WARNING):
        gw = await make_gateway(upstream.url, store=store)
    unreadable = [r for r in caplog.records if "subject blocks" in r.getMessage()]
    assert unreadable == [], [r.getMessage() for r in unreadable]
    assert await gw.client.app[GATEWAY].blocks.poll()  # and the store answers the same read
