"""Anomaly detectors (9.1.6, 9.1.9, 10.2) as SQL over the real audit schema, on chdb and on the
18.16 server, on crafted traffic: what must be found is found, normal traffic is not, and
judging a window twice (or from a second replica) records nothing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, event_rows
from gateway.audit.store.factory import open_store
from gateway.config.load import load_config
from gateway.config.model import AnomaliesConfig, Thresholds
from gateway.core.errors import ConfigError
from gateway.governance.anomalies import US, Detector, job_function
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import (
    GatewayFactory,
    Keys,
    ServeFactory,
    Upstream,
    config_dict,
    run_cli,
    write_config,
)
from tests.stores import ENGINES, count, fresh_database, store_config, store_section, wait_for

# Monday 30 November 2026, 10:00 in Moscow (07:00 UTC): inside working hours.
MONDAY_10_MSK = int(dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC).timestamp()) * US
# Working hours that hold at any time of any day: tests about other detections run at any hour
# (a run at 22:00 or on a Saturday must not also find off-hours access).
ALWAYS = {"start": "00:00", "end": "24:00", "days": [1, 2, 3, 4, 5, 6, 7]}

CFG = AnomaliesConfig(
    window_seconds=60,
    delay_seconds=0,
    timezone="Europe/Moscow",
    thresholds={
        "default": Thresholds(bulk_subjects=100, refusals=20),
        "hr_officer": Thresholds(bulk_subjects=200, refusals=20),
    },
    usual_readers={"employee_health": frozenset({"hr_officer"})},
)


@pytest.fixture(params=ENGINES)
def store(request: Any, chdb_dir: Path, ch_server: ClickHouseServer) -> Iterator[AuditStore]:
    section = store_section(request.param, fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    s = open_store(store_config(section), apply_schema=True)
    yield s
    s.close()


_n = 0


def _event(user: str, roles: list[str], ts_us: int, **over: Any) -> dict[str, Any]:
    global _n
    _n += 1
    return {
        "event_id": f"e{_n}",
        "request_id": f"r{_n}",
        "ts_us": ts_us,
        "instance": "gw-a",
        "seq": _n,
        "user": user,
        "roles": roles,
        "path": "/hr/employees/1",
        "system": "hr",
        "category": "employee",
        "action": "read",
        "decision": "allow",
        "reason": "rule",
        "status": 200,
        **over,
    }


def _ship(store: AuditStore, events: list[dict[str, Any]]) -> None:
    rows, subjects = [], []
    for e in events:
        row, subs = event_rows(e, "crafted")
        rows.append(row)
        subjects += subs
    store.insert(schema.ACCESS_EVENTS, rows, "crafted")
    if subjects:
        store.insert(schema.ACCESS_EVENT_SUBJECTS, subjects, "crafted")


def _change(change_id: str, actor: str, ts_us: int, instance: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        n: ([] if t.startswith("Array") else 0 if "Int" in t else "")
        for n, t in schema.PERMISSION_CHANGE_RECORDS.columns
    }
    row.update(change_id=change_id, actor=actor, ts_us=ts_us, instance=instance, kind="grant")
    row["ts"] = dt.datetime.fromtimestamp(ts_us / US, dt.UTC)
    return row


def _found(detections: list[Any]) -> set[tuple[str, str, str]]:
    return {(d.kind, d.user, d.job_function) for d in detections}


def test_one_user_reading_500_subjects_in_a_minute_is_bulk_access_and_many_normal_users_are_not(
    store: AuditStore,
) -> None:
    w = MONDAY_10_MSK
    events = [
        # 250 subjects by path, 250 more named in list responses: 500 distinct in the minute.
        _event("alice", ["hr_officer"], w + i * 100_000, subject_ids=[f"s{i}"])
        for i in range(250)
    ]
    events += [
        _event(
            "alice",
            ["hr_officer"],
            w + 30 * US + i,
            path="/hr/employees",
            response_subjects=[f"s{250 + 10 * i + k}" for k in range(10)],
        )
        for i in range(25)
    ]
    # Fifty colleagues at work: 20 subjects each (1,000 in all, many shared).
    events += [
        _event(f"user{u}", ["accountant"], w + u * US, subject_ids=[f"s{(u * 7 + k) % 300}"])
        for u in range(50)
        for k in range(20)
    ]
    events.append(_event("alice", ["hr_officer"], w + 61 * US, subject_ids=["late"]))
    _ship(store, events)
    detector = Detector(CFG, store, "gw-a")
    found = detector.judge_window(w)
    assert _found(found) == {("bulk_access", "alice", "hr_officer")}
    (bulk,) = found
    assert (bulk.distinct_subjects, bulk.count, bulk.threshold) == (500, 500, 200)
    assert len(bulk.sample_request_ids) == 5
    # Idempotent per window: again, and from another replica, nothing more is recorded.
    assert detector.judge_window(w) == []
    assert Detector(CFG, store, "gw-b").judge_window(w) == []
    assert count(store, "anomalies") == 1
    (row,) = store.select(
        f"SELECT kind, user, job_function, window_start_us, window_end_us, distinct_subjects, "
        f"instance FROM {store.database}.anomalies FINAL"
    )
    assert row == {
        "kind": "bulk_access",
        "user": "alice",
        "job_function": "hr_officer",
        "window_start_us": w,
        "window_end_us": w + 60 * US,
        "distinct_subjects": 500,
        "instance": "gw-a",
    }


def test_off_hours_probing_special_category_exports_and_break_glass_are_found(
    store: AuditStore,
) -> None:
    w = MONDAY_10_MSK
    night = w + 13 * 3600 * US + 30 * 60 * US  # 23:30 in Moscow, 20:30 UTC
    saturday = w + 5 * 24 * 3600 * US  # 10:00, but on a Saturday
    events = [
        _event("bob", ["accountant"], night + US),
        _event("carol", ["accountant"], night + 2 * US, category="none"),  # no personal data
        _event("erin", ["hr_officer"], saturday + US),
    ]
    events += [
        _event("mallory", ["accountant"], w + i * US // 10, decision="deny",
               reason="no_matching_rule", status=403, path=f"/hr/medical/{i}")
        for i in range(30)
    ]  # fmt: skip
    events += [
        _event("dave", ["accountant"], w + i * US, decision="deny", reason="no_matching_rule")
        for i in range(3)
    ]
    events += [
        _event("eve", ["accountant"], w + 5 * US, category="employee_health"),  # not usual
        _event("harry", ["hr_officer"], w + 6 * US, category="employee_health"),  # usual reader
        _event("frank", ["accountant"], w + 7 * US, action="export"),
        _event("gina", ["hr_officer"], w + 8 * US, reason="break_glass", rule="break-glass:x"),
    ]
    _ship(store, events)
    # Access-rights changes (9.2.7): one at night, recorded by two replicas; one at 10:00.
    changes = [
        _change("c-night", "admin", night + 3 * US, "gw-a"),
        _change("c-night", "admin", night + 3 * US, "gw-b"),
        _change("c-day", "admin", w + 9 * US, "gw-a"),
    ]
    store.insert(schema.PERMISSION_CHANGE_RECORDS, changes, "crafted")
    detector = Detector(CFG, store, "gw-a")
    assert _found(detector.judge_window(w)) == {
        ("probing", "mallory", "default"),
        ("special_category", "eve", "default"),
        ("export", "frank", "default"),
        ("break_glass", "gina", "hr_officer"),
    }
    night_found = detector.judge_window(night - night % (60 * US))
    assert _found(night_found) == {
        ("off_hours", "bob", "default"),
        ("permission_change", "admin", "default"),
    }
    (change,) = [d for d in night_found if d.kind == "permission_change"]
    assert (change.count, change.sample_request_ids) == (1, ("c-night",))
    assert _found(detector.judge_window(saturday)) == {("off_hours", "erin", "hr_officer")}


def test_with_no_working_days_every_access_is_off_hours(store: AuditStore) -> None:
    """`working_hours: {days: []}`: the text the detector sends is valid on 18.16 too."""
    cfg = dataclasses.replace(CFG, work_days=(), change_days=())
    w = MONDAY_10_MSK
    _ship(store, [_event("ivan", ["accountant"], w + US)])
    store.insert(
        schema.PERMISSION_CHANGE_RECORDS, [_change("c-1", "admin", w + 2 * US, "gw-a")], "c"
    )
    assert _found(Detector(cfg, store, "gw-a").judge_window(w)) == {
        ("off_hours", "ivan", "default"),
        ("permission_change", "admin", "default"),
    }


def test_due_windows_follow_the_clock_and_catch_up_after_a_pause() -> None:
    cfg = AnomaliesConfig(window_seconds=60, delay_seconds=30, catch_up_windows=3)

    class NoStore:
        database = "x"

    detector = Detector(cfg, NoStore(), "gw")  # type: ignore[arg-type]
    now = MONDAY_10_MSK + 95 * US  # 10:01:35: the window 10:00-10:01 ended 35 s ago
    assert detector.due_windows(now) == [
        MONDAY_10_MSK - 120 * US,
        MONDAY_10_MSK - 60 * US,
        MONDAY_10_MSK,
    ]


def test_a_user_is_judged_by_their_most_permissive_configured_job_function() -> None:
    assert job_function(["accountant", "hr_officer"], CFG)[0] == "hr_officer"
    assert job_function(["intern"], CFG)[0] == "default"


async def test_the_gateway_runs_the_detectors_and_counts_detections_by_kind_and_job_function(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys, ch_server: ClickHouseServer
) -> None:
    """Served traffic, shipped, judged by the gateway's own background task."""
    section = store_section("clickhouse", fresh_database(), chdb_dir=Path(), server=ch_server)
    anomalies = {
        "interval_seconds": 0.2,
        "window_seconds": 10,
        "delay_seconds": 1,
        "catch_up_windows": 2,
        "thresholds": {"default": {"bulk_subjects": 100}},
        "working_hours": ALWAYS,  # bulk access is the point, whatever the time of the run
    }
    gw = await make_gateway(upstream.url, store=section, anomalies=anomalies)
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    for i in range(300):  # split across two windows at worst: one holds more than 100
        r = await gw.client.get(f"/hr/employees/{i}", headers=auth)
        await r.read()
    labels = {"kind": "bulk_access", "job_function": "default"}
    await asyncio.to_thread(
        wait_for, lambda: gw.metric("pdgw_anomalies_total", labels) >= 1, 40, "a detection"
    )
    store = open_store(store_config(section), apply_schema=False)
    rows = store.select(f"SELECT kind, user FROM {store.database}.anomalies FINAL")
    assert {(r["kind"], r["user"]) for r in rows} == {("bulk_access", "alice")}
    assert gw.metric("pdgw_anomalies_total", {"kind": "probing", "job_function": "default"}) == 0
    assert gw.metric("pdgw_anomaly_detection_runs_total", {"result": "ok"}) >= 1
    store.close()


def test_the_anomalies_section_reports_every_problem_at_once(tmp_path: Path, keys: Keys) -> None:
    data = config_dict(
        tmp_path,
        "http://127.0.0.1:1",
        anomalies={
            "timezone": "Mars/Olympus",
            "working_hours": {"start": "25:00", "days": [0]},
            "thresholds": {"hr_officer": {"bulk_subjects": -1}},
            "usual_readers": {"medical": ["doctor"]},
        },
    )
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, data, keys))
    text = str(e.value)
    for key in (
        "anomalies.timezone",
        "anomalies.working_hours.start",
        "anomalies.working_hours.days",
        "anomalies.thresholds.hr_officer.bulk_subjects",
        "anomalies.usual_readers.medical",
    ):
        assert key in text, key


async def test_two_gateway_replicas_on_one_store_are_judged_together_and_their_chains_verify(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys, ch_server: ClickHouseServer
) -> None:
    """Alice reads 60 subjects through each of two replicas: neither sees more than 60, the
    store sees 120, over the threshold of 100. Both replicas run the detectors; the detection is
    recorded once. Each replica's chain verifies."""
    section = store_section("clickhouse", fresh_database(), chdb_dir=Path(), server=ch_server)
    anomalies = {
        "interval_seconds": 0.2,
        "window_seconds": 3600,
        "delay_seconds": 0,
        "catch_up_windows": 1,
        "thresholds": {"default": {"bulk_subjects": 100}},
        "working_hours": ALWAYS,  # bulk access is the point, whatever the time of the run
    }
    gws = [
        await serve_gateway(
            upstream.url,
            instance_id=f"gw-{i}",
            store=section,
            anomalies={**anomalies, "delay_seconds": 10_000},  # judged below, by hand first
            audit={"checkpoint_interval_seconds": 0.2},
        )
        for i in (1, 2)
    ]
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    async with aiohttp.ClientSession() as http:
        for i in range(120):
            gw = gws[i % 2]
            async with http.get(f"{gw.proxy_url}/hr/employees/{i}", headers=auth) as r:
                assert r.status == 200
    store = open_store(store_config(section), apply_schema=False)
    await asyncio.to_thread(wait_for, lambda: count(store) >= 120, 30, "both shipped")
    cfg = load_config(gws[0].spool_dir.parent / "gateway.yaml").anomalies
    assert cfg is not None
    cfg = dataclasses.replace(cfg, delay_seconds=0)
    hour = 3600 * US
    start = (time.time_ns() // 1000) // hour * hour
    # Each replica's detector judges the same window: one record, one count.
    first = Detector(cfg, store, "gw-1").judge_window(start)
    second = Detector(cfg, store, "gw-2").judge_window(start)
    assert _found(first) == {("bulk_access", "alice", "default")} and second == []
    (row,) = store.select(f"SELECT distinct_subjects, count FROM {store.database}.anomalies FINAL")
    assert row == {"distinct_subjects": 120, "count": 120}
    verify = run_cli(
        "audit",
        "verify",
        "--config",
        str(gws[0].spool_dir.parent / "gateway.yaml"),
        *(f"--public-key={gw.spool_dir.parent / 'checkpoint-key.pub'}" for gw in gws),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "gw-1" in verify.stdout and "gw-2" in verify.stdout
    store.close()
