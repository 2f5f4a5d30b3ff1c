"""The audit query API (9.2.6): real gateway listeners, real tokens, the shipped policy, and the
real engines — chdb inside this process (the gateway's own store) and Debian's clickhouse-server."""

from __future__ import annotations

import datetime as dt
import json
import random
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, event_rows
from gateway.audit.store.factory import open_store
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import Keys, Served, ServeFactory, Upstream, spool_records
from tests.stores import ENGINES, fresh_database, store_config, store_section

ROLES = ["hr_officer", "accountant", "sales_manager", "support_agent", "web_editor"]
READERS = ["security_officer", "dpo"]
ENDPOINTS = [
    ("/admin/audit/events", "read"),
    ("/admin/audit/subjects/emp-1/events", "read"),
    ("/admin/audit/export", "export"),
    ("/admin/audit/permissions", "read"),
]


def _event(
    i: int, *, user: str, subjects: list[str], listed: list[str], ts_us: int
) -> dict[str, Any]:
    return {
        "kind": "access",
        "event_id": f"ev{i:07d}",
        "ts_us": ts_us,
        "instance": "gw-seed",
        "seq": i,
        "request_id": f"rq{i}",
        "user": user,
        "roles": ["hr_officer"],
        "client_ip": "10.0.0.1",
        "auth": "bearer",
        "session": "",
        "method": "GET",
        "path": "/hr/employees/" + (subjects[0] if subjects else ""),
        "query": "",
        "route": "hr-employees",
        "system": "hr",
        "category": "employee",
        "action": "read",
        "subject_ids": subjects,
        "decision": "allow",
        "reason": "rule",
        "rule": "p, hr_officer, hr, employee, read",
        "policy_version": "v",
        "status": 200,
        "outcome": "complete",
        "response_subjects": listed,
        "response_count": len(listed),
    }


def seed(store: AuditStore, n: int, target: str, *, start: int = 0) -> set[str]:
    """``n`` events over many subjects; return the ids of those that touched ``target`` (by the
    path, or among a list response's subjects)."""
    rng = random.Random(7)
    base = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() * 1e6)
    expected: set[str] = set()
    rows, subject_rows = [], []
    for i in range(start, start + n):
        subjects = [f"emp-{rng.randrange(5000)}"]
        listed = [f"emp-{rng.randrange(5000)}" for _ in range(rng.randrange(4))]
        if i % 997 == 0:
            subjects = [target]
        if i % 1409 == 0:
            listed.append(target)
        ev = _event(i, user=f"u{i % 50}", subjects=subjects, listed=listed, ts_us=base + i * 1000)
        if target in subjects or target in listed:
            expected.add(ev["event_id"])
        row, subs = event_rows(ev, "seed")
        rows.append(row)
        subject_rows += subs
    store.insert(schema.ACCESS_EVENTS, rows, f"seed-{start}")
    store.insert(schema.ACCESS_EVENT_SUBJECTS, subject_rows, f"seed-{start}")
    return expected


async def get(
    gw: Served, path: str, token: str | None, **params: str
) -> tuple[int, list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = gw.admin_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers=headers) as resp,
    ):
        text = await resp.text()
    if resp.headers.get("Content-Type", "").startswith("application/x-ndjson"):
        return resp.status, [json.loads(line) for line in text.splitlines()]
    return resp.status, [json.loads(text)]


async def _gateway(
    kind: str,
    serve_gateway: ServeFactory,
    upstream: Upstream,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> tuple[Served, AuditStore]:
    section = store_section(kind, fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    store = open_store(store_config(section), apply_schema=True)
    gw = await serve_gateway(upstream.url, store=section)
    return gw, store


@pytest.mark.parametrize("kind", ENGINES)
async def test_who_accessed_finds_exactly_one_subjects_events_among_thousands(
    kind: str,
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    gw, store = await _gateway(kind, serve_gateway, upstream, chdb_dir, ch_server)
    expected = seed(store, 12_000, "emp-target")
    assert len(expected) > 15  # by path and by list responses
    status, lines = await get(
        gw, "/admin/audit/subjects/emp-target/events", keys.token("dana", ["dpo"])
    )
    assert status == 200
    *rows, end = lines
    assert {r["event_id"] for r in rows} == expected
    assert len(rows) == len(expected)  # each once
    assert end["_end"]["rows"] == len(expected) and not end["_end"]["truncated"]
    assert [r["ts_us"] for r in rows] == sorted(r["ts_us"] for r in rows)
    # Pages continue where the last one ended: a limit below the page size, and several pages.
    status, lines = await get(gw, "/admin/audit/events", keys.token("sam", ["security_officer"]))
    *rows, end = lines
    assert len(rows) == 10_000 and end["_end"]["truncated"]  # MAX_ROWS, said so
    assert len({r["event_id"] for r in rows}) == 10_000
    status, lines = await get(
        gw, "/admin/audit/events", keys.token("sam", ["security_officer"]), user="u7", limit="30"
    )
    *rows, end = lines
    assert len(rows) == 30 and {r["user"] for r in rows} == {"u7"} and end["_end"]["truncated"]
    store.close()


@pytest.mark.parametrize("kind", ENGINES)
async def test_each_query_is_allowed_or_refused_by_job_function_and_recorded(
    kind: str,
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    gw, store = await _gateway(kind, serve_gateway, upstream, chdb_dir, ch_server)
    seed(store, 50, "emp-1")
    calls: list[tuple[str, str, str, int, int]] = []  # user, role, path, status, rows
    for role in ROLES + READERS:
        for path, _action in ENDPOINTS:
            status, lines = await get(
                gw, path, keys.token(f"user-{role}", [role]), decision="allow"
            )
            rows = len(lines) - 1 if status == 200 else 0
            calls.append((f"user-{role}", role, path, status, rows))
            assert status == (200 if role in READERS else 403), (role, path)
            if status == 403:
                assert lines[0]["error"] == "forbidden"
    status, lines = await get(gw, "/admin/audit/events", None)
    assert status == 401
    status, lines = await get(
        gw, "/admin/audit/events", keys.token("sam", ["security_officer"]), since="yesterday"
    )
    assert status == 400 and lines[0]["message"].startswith("since: ISO 8601")
    # Unix seconds read as µs would be January 1970 and match everything: refused, unit named.
    status, lines = await get(
        gw, "/admin/audit/events", keys.token("sam", ["security_officer"]), since="1764800000"
    )
    assert status == 400 and "µs since the epoch (16 digits)" in lines[0]["message"]

    records = spool_records(gw.spool_dir)
    access = [r for r in records if r["kind"] == "access" and r["category"] == "audit_log"]
    outcomes = {r["event_id"]: r for r in records if r["kind"] == "outcome"}
    assert len(access) == len(calls) + 2  # the bad filters too; the anonymous one is counted
    for rec, (user, role, path, status, rows) in zip(access, calls, strict=False):
        assert (rec["user"], rec["roles"], rec["system"]) == (user, [role], "audit")
        assert rec["purpose"] == "audit_control"  # 9.2.6: the trail is read for control only
        assert "decision=allow" in rec["query"]
        assert "emp-1" not in rec["path"]  # the subject is in subject_ids, not in the path
        if path.startswith("/admin/audit/subjects/"):
            assert rec["subject_ids"] == ["emp-1"]
        if status == 200:
            assert rec["decision"] == "allow" and rec["rule"].startswith(f"p, {role}, audit")
            out = outcomes[rec["event_id"]]
            assert out["response_count"] == rows and out["outcome"] == "complete"
        else:
            assert (rec["decision"], rec["status"]) == ("deny", 403)
    assert access[-1]["reason"] == "bad_filter" and access[-1]["status"] == 400
    store.close()


async def test_cli_answers_who_accessed_activity_and_export_with_a_token_from_file_or_env(
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
    tmp_path: Path,
) -> None:
    import asyncio
    import csv
    import io
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    gw, store = await _gateway("embedded", serve_gateway, upstream, chdb_dir, ch_server)
    expected = seed(store, 3000, "emp-target")
    token = keys.token("dana", ["dpo"])
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "audit", *args, "--gateway", gw.admin_url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            # The machine's zone is set here: a naive time is read in it (no wall-clock guess).
            env={**os.environ, "TZ": "UTC", **(env or {})},
        )

    out = await asyncio.to_thread(
        cli, "who-accessed", "emp-target", "--token-file", str(token_file)
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "times in UTC, UTC+00:00"
    assert lines[1].split()[:3] == ["TIME", "USER", "JOB"]
    assert len(lines) == 2 + len(expected)
    out = await asyncio.to_thread(
        cli, "activity", "u3", "--format", "json", env={"PDGW_TOKEN": token}
    )
    rows = json.loads(out.stdout)  # one JSON array
    assert rows and {r["user"] for r in rows} == {"u3"} and len(rows) == 3000 // 50
    out = await asyncio.to_thread(
        cli, "export", "--system", "hr", "--since", "2026-11-01T00:00:01", env={"PDGW_TOKEN": token}
    )
    exported = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(exported) == 2000  # 1 s after the first of 3000 events 1 ms apart
    # The same moment as Moscow wall-clock time, with --tz; and as a zoned ISO time.
    for since in (("2026-11-01T03:00:01", "--tz", "Europe/Moscow"), ("2026-11-01T03:00:01+03:00",)):
        out = await asyncio.to_thread(
            cli, "export", "--system", "hr", "--format", "ndjson", "--since", *since,
            env={"PDGW_TOKEN": token},
        )  # fmt: skip
        assert len(out.stdout.splitlines()) == 2000, (since, out.stderr)
    out = await asyncio.to_thread(cli, "search", "--decision", "allow")  # no token
    assert out.returncode == 2 and "PDGW_TOKEN" in out.stderr
    # 9.2.6: each command is in the trail; the token itself is nowhere in it, nor in any output.
    records = [r for r in spool_records(gw.spool_dir) if r.get("category") == "audit_log"]
    assert [r["action"] for r in records] == ["read", "read", "export", "export", "export"]
    assert all(token not in json.dumps(r) for r in spool_records(gw.spool_dir))
    assert token not in out.stdout + out.stderr
    store.close()


def test_no_command_takes_a_token_as_an_option_value() -> None:
    """A token on the command line lands in shell history and `ps`: only files and env vars."""
    import argparse

    from gateway.cli import build_parser

    def walk(p: argparse.ArgumentParser) -> list[str]:
        found: list[str] = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    found += walk(child)
            found += [o for o in a.option_strings if "token" in o and o != "--token-file"]
        return found

    assert walk(build_parser()) == []
