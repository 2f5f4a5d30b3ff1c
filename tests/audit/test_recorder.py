"""One way to record an access and its outcome (gateway.audit.recorder), and the spool's refusal of
any record the trail's readers could not pair (events.Pairing); and a trail begun in record
version 2 still verifies after version 3 (purpose, label) and migration 4 — real spools, real
engines (chdb in process, Debian's clickhouse-server)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.audit import chain, checkpoint
from gateway.audit.events import (
    FIELDS,
    AccessEvent,
    Outcome,
    SubjectBlock,
    UnpairedRecord,
    access,
    join,
)
from gateway.audit.recorder import Recorder
from gateway.audit.segments import read_records
from gateway.audit.shipping.shipper import Shipper
from gateway.audit.spool import Spool
from gateway.audit.store import schema
from gateway.audit.store.base import migrate
from gateway.audit.store.factory import open_store
from gateway.audit.verify import verify_store
from gateway.core.errors import SpoolUnavailable
from gateway.testing.chserver import ClickHouseServer
from tests.stores import ENGINES, fresh_database, store_config, store_section


def _access(n: int, decision: str = "allow", **values: Any) -> AccessEvent:
    return access(
        request_id=f"r{n}",
        user="alice",
        roles=["hr_officer"],
        client_ip="127.0.0.1",
        auth="bearer",
        session="",
        method="GET",
        path=f"/hr/employees/{n}",
        query="",
        route="hr-employees",
        system="hr",
        category="employee",
        purpose="hr_records",
        action="read",
        subject_ids=[str(n)],
        decision=decision,
        reason="rule" if decision == "allow" else "no_matching_rule",
        rule="",
        policy_version="v1",
        **values,
    )


def _seqs(directory: Path) -> list[int]:
    return [r["seq"] for r in read_records(directory) if "hash" in r]


async def test_in_fsync_mode_the_outcome_rides_the_next_group_commit_without_its_own_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 027: one durable wait per request. The access waits for its fsync (9.1.8: on
    disk before the upstream sees the request); its outcome returns once it is written to the
    operating system, and the next fsync makes it durable. A disk that stops answering holds
    the access back (refused at the sync timeout), never the outcome of one already admitted."""
    import os
    import threading

    spool = Spool(tmp_path, durability="fsync", sync_timeout=1.0)
    spool.open()
    recorder = Recorder(spool)
    try:
        pending = await recorder.begin(_access(1))
        release = threading.Event()
        real_fsync = os.fsync

        def stuck(fd: int) -> None:
            release.wait(10)
            real_fsync(fd)

        monkeypatch.setattr("gateway.audit.spool.os.fsync", stuck)
        await asyncio.wait_for(pending.finish(status=200, duration_us=5), 0.5)
        assert spool.unsynced_age_seconds > 0  # written, its fsync still to come
        with pytest.raises(SpoolUnavailable, match="sync_timeout"):
            await recorder.begin(_access(2))  # a new access waits for the disk, and is refused
        release.set()
        monkeypatch.setattr("gateway.audit.spool.os.fsync", real_fsync)
    finally:
        spool.close()
    kinds = [(r["kind"], r.get("event_id")) for r in read_records(tmp_path) if "seq" in r]
    assert kinds[:2] == [("access", pending.event.event_id), ("outcome", pending.event.event_id)]


async def test_an_outcome_is_written_only_for_an_access_begun_as_pending(tmp_path: Path) -> None:
    spool = Spool(tmp_path, instance="gw-1")
    spool.open()
    recorder = Recorder(spool)
    try:
        pending = await recorder.begin(_access(1))
        await pending.finish(status=200, duration_us=5, response_count=2)
        with pytest.raises(RuntimeError):  # once
            await pending.finish(status=200, duration_us=5)
        await recorder.complete(_access(2), status=200, duration_us=3, response_count=4)
        await recorder.refuse(_access(3, "deny"), 403, "no_matching_rule", 7)
        with pytest.raises(ValueError):
            await recorder.begin(_access(4, "deny"))  # a refusal is refused, not begun
        written = _seqs(tmp_path)
        # What any other path could try, each refused before it reaches the file:
        bad: list[Any] = [
            # an allowed access complete in one record (the shape `audit verify` cannot rebuild)
            _access(5, status=200, outcome="complete", duration_us=1),
            # a pending access that already holds outcome values
            _access(6, status=200),
            # a refusal left pending
            _access(7, "deny"),
            # an outcome for an access never begun, for a refusal, and for one already complete
            Outcome("nope", 200, 0, 0, 0, 0, "complete"),
        ]
        refusal = next(r for r in read_records(tmp_path) if r.get("decision") == "deny")
        bad += [
            Outcome(refusal["event_id"], 200, 0, 0, 0, 0, "complete"),
            Outcome(pending.event.event_id, 200, 0, 0, 0, 0, "complete"),
        ]
        for record in bad:
            with pytest.raises(UnpairedRecord):
                await spool.append(record)
        assert _seqs(tmp_path) == written == [1, 2, 3, 4, 5]  # nothing taken a number
    finally:
        spool.close()
    events = [e for e in join(read_records(tmp_path)) if e["kind"] == "access"]
    assert [
        (e["decision"], e["status"], e["outcome"], e.get("response_count", 0)) for e in events
    ] == [
        ("allow", 200, "complete", 2),
        ("allow", 200, "complete", 4),
        ("deny", 403, "complete", 0),
    ]


class _V2:
    """A record exactly as a release of record version 2 wrote it (no purpose, no label)."""

    def __init__(self, kind: str, values: dict[str, Any]) -> None:
        self.KIND = kind
        self._values = tuple(values[n] for n in FIELDS[(kind, 2)])

    KIND: ClassVar[str]

    def values(self) -> tuple[Any, ...]:
        return self._values


@pytest.mark.parametrize("kind", ENGINES)
async def test_a_trail_begun_in_record_version_2_verifies_after_the_upgrade(
    kind: str,
    tmp_path: Path,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spool_dir = tmp_path / "spool"
    signer = tmp_path / "cp.pem"
    checkpoint.generate(signer, tmp_path / "cp.pub")
    # A run of the earlier release: version 2 lines, the chain from genesis.
    import gateway.audit.spool as spool_module

    monkeypatch.setattr(spool_module, "RECORD_VERSION", 2)
    old = Spool(spool_dir, instance="gw-up")
    old.open()
    allowed = _access(1)
    block = SubjectBlock("b1", allowed.ts_us, "dana", "block", "h:k:1", "request 3", "r9", "")
    outcome = Outcome(allowed.event_id, 200, 0, 10, 5, 1, "complete")
    for kind_, record in (
        ("access", allowed),
        ("outcome", outcome),
        ("subject_block", block),
        ("access", _access(2, "deny", status=403, outcome="complete")),
    ):
        values = dict(zip(FIELDS[(kind_, 3)], record.values(), strict=True))
        await old.append(_V2(kind_, values))  # type: ignore[arg-type]
    old.close()
    monkeypatch.setattr(spool_module, "RECORD_VERSION", 3)
    # The upgraded gateway carries the chain on in version 3.
    new = Spool(spool_dir, instance="gw-up")
    new.open()
    recorder = Recorder(new)
    await recorder.complete(_access(3), status=200, duration_us=2, response_count=1)
    await recorder.refuse(_access(4, "deny"), 403, "no_matching_rule", 1)
    await recorder.note(
        SubjectBlock("b2", _access(5).ts_us, "dana", "unblock", "h:k:1", "done", "r10", "DPO-3")
    )
    await checkpoint.Checkpointer(new, checkpoint.Signer.load(signer), 60).checkpoint()
    new.close()
    versions = [r["v"] for r in read_records(spool_dir) if "hash" in r]
    assert versions == [2, 2, 2, 2, 3, 3, 3, 3]

    section = store_section(kind, fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    shipper = Shipper(spool_dir, lambda: open_store(store_config(section)), batch_max_rows=3)
    shipper.acquire()
    try:
        shipper.run(follow=False, finalize_at_end=True)
    finally:
        shipper.release()
    store = open_store(store_config(section), apply_schema=False)
    report = verify_store(store, checkpoint.load_public_keys([tmp_path / "cp.pub"]))
    assert report.ok, report.problems
    assert report.instances[0].records == 8
    rows = store.select(
        f"SELECT record_v, purpose FROM {store.database}.access_events ORDER BY seq"
    )
    assert [(int(r["record_v"]), r["purpose"]) for r in rows] == [
        (2, ""),
        (2, ""),
        (3, "hr_records"),
        (3, "hr_records"),
    ]
    store.close()


@pytest.mark.parametrize("kind", ENGINES)
def test_a_store_of_version_3_gets_the_later_migrations_in_order_and_its_rows_are_counted(
    kind: str, chdb_dir: Path, ch_server: ClickHouseServer
) -> None:
    section = store_section(kind, fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    store = open_store(store_config(section), apply_schema=False)
    db = store.database
    # The schema as migrations 1-3 left it: their tables, two of them without the new columns.
    for sql in schema.bootstrap_ddl(db, modern=store.modern):
        store.execute(sql)
    for m in schema.MIGRATIONS[:3]:
        for table in m.tables:
            older = schema.Table(
                table.name,
                tuple(c for c in table.columns if c[0] not in ("purpose", "label")),
                table.order_by,
                table.partition_by,
                table.shard_key,
                table.engine,
            )
            for sql in schema.create_table(older, db, modern=store.modern):
                store.execute(sql)
    # A version-2 access already in the store (no purpose column yet).
    store.execute(
        f"INSERT INTO {db}.access_events (event_id, ts_us, system, category, action, decision, "
        "reason, status, record_v) SELECT 'e1', toUInt64(1796000000000000), 'hr', 'employee', "
        "'read', 'allow', 'rule', toUInt16(200), toUInt8(2)"
    )
    when = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    rows = [{"version": v, "name": "", "applied_at": when, "variant": ""} for v in (1, 2, 3)]
    store.insert(schema.MIGRATIONS_TABLE, rows, "old")
    # 4 (record version 3) first: 5's views read its columns; then 6 (the register, decision 029).
    assert migrate(store) == [4, 5, 6]
    for table, column in (("access_events", "purpose"), ("subject_blocks", "label")):
        names = {
            r["name"]
            for r in store.select(
                "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
                {"db": db, "t": table},
            )
        }
        assert column in names
    # Migration 5 counted the row the store held; a version-3 row inserted now is counted too.
    store.execute(
        f"INSERT INTO {db}.access_events (event_id, ts_us, system, category, purpose, action, "
        "decision, reason, status, record_v) SELECT 'e2', toUInt64(1796000000000001), 'audit', "
        "'audit_log', 'audit_control', 'read', 'allow', 'rule', toUInt16(200), toUInt8(3)"
    )
    counted = store.select(
        f"SELECT category, sum(accesses) AS n FROM {db}_dashboards.access_counts "
        "GROUP BY category ORDER BY category"
    )
    assert [(r["category"], int(r["n"])) for r in counted] == [("audit_log", 1), ("employee", 1)]
    store.close()


def test_the_version_2_layout_is_the_version_3_layout_without_the_new_fields() -> None:
    assert FIELDS[("access", 3)] == (*FIELDS[("access", 2)], "purpose")
    assert FIELDS[("subject_block", 3)] == (*FIELDS[("subject_block", 2)], "label")
    for kind in ("outcome", "permission_change", "refusal_summary", "auth_event"):
        assert FIELDS[(kind, 3)] == FIELDS[(kind, 2)]
    assert chain.GENESIS == "0" * 64
