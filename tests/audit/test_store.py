"""The audit store (9.1.8, 9.2.7): schema on both engines, and shipping with nothing lost or
doubled — against Debian's real clickhouse-server on loopback and chdb in-process."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, event_rows, migrate
from gateway.audit.store.factory import open_store
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import GatewayFactory, Keys, Upstream, run_cli
from tests.stores import (
    ENGINES,
    chain_numbers,
    count,
    fresh_database,
    store_config,
    store_section,
    wait_for,
)


def _store(kind: str, chdb_dir: Path, server: ClickHouseServer | None, database: str) -> AuditStore:
    section = store_section(kind, database, chdb_dir=chdb_dir, server=server)
    return open_store(store_config(section), apply_schema=False)


@pytest.mark.parametrize("kind", ENGINES)
def test_schema_init_is_idempotent_and_picks_types_by_engine_version(
    kind: str, chdb_dir: Path, ch_server: ClickHouseServer
) -> None:
    store = _store(kind, chdb_dir, ch_server, fresh_database())
    assert migrate(store) == [1, 2, 3, 4, 5, 6]  # 4 (record version 3) before 5 (the console's)
    assert migrate(store) == []  # run twice: nothing more
    versions = store.select(f"SELECT version, variant FROM {store.database}.schema_migrations")
    types = {
        r["name"]: r["type"]
        for r in store.select(
            "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = 'access_events'",
            {"db": store.database},
        )
    }
    versions = sorted(versions, key=lambda v: int(v["version"]))
    if kind == "embedded":  # chdb 26.x: the modern branch
        assert versions == [{"version": v, "variant": "modern"} for v in (1, 2, 3, 4, 5, 6)]
        assert (
            types["ts"] == "DateTime64(6, 'UTC')" and types["category"] == "LowCardinality(String)"
        )
    else:  # clickhouse-server 18.16: the legacy branch
        assert store.server_version().startswith("18.16")
        assert versions == [{"version": v, "variant": "legacy"} for v in (1, 2, 3, 4, 5, 6)]
        assert types["ts"] == "DateTime('UTC')" and types["category"] == "String"
    assert types["ts_us"] == "UInt64"
    tables = {
        r["name"]
        for r in store.select(
            "SELECT name FROM system.tables WHERE database = %(db)s", {"db": store.database}
        )
    }
    assert tables == {
        "schema_migrations",
        "access_events",
        "access_event_subjects",
        "permission_change_records",
        "permission_changes",  # the view that counts each change once
        "permission_changes_v1",  # the first releases' table, kept
        "refusal_summaries",
        "chain_checkpoints",
        "auth_events",
        "subject_blocks",
        "retention_actions",
        "anomalies",
        "anomaly_reviews",
        "subject_requests",  # migration 6: the register of subjects' requests
    }
    dashboards = {
        r["name"]: r["engine"]
        for r in store.select(
            "SELECT name, engine FROM system.tables WHERE database = %(db)s",
            {"db": store.database + "_dashboards"},
        )
    }
    assert dashboards == {
        "access_counts": "SummingMergeTree",
        "access_counts_mv": "MaterializedView",
        "job_function_counts": "SummingMergeTree",
        "job_function_counts_mv": "MaterializedView",
        "anonymous_refusal_counts": "SummingMergeTree",
        "anonymous_refusal_counts_mv": "MaterializedView",
        "permission_change_counts": "AggregatingMergeTree",
        "permission_change_counts_mv": "MaterializedView",
    }
    store.close()


@pytest.mark.parametrize("kind", ENGINES)
async def test_n_requests_become_exactly_n_rows_matching_what_clients_saw(
    kind: str,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    n = 2000
    section = store_section(
        kind, fresh_database(), chdb_dir=chdb_dir, server=ch_server, batch_max_rows=300
    )
    gw = await make_gateway(upstream.url, store=section)
    hr = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    acc = {"Authorization": f"Bearer {keys.token('bob', ['accountant'])}"}
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> tuple[str, int]:
        async with sem:
            headers = hr if i % 4 else acc
            r = await gw.client.get(f"/hr/medical/{i}", headers=headers)
            await r.read()
            return r.headers["X-Request-Id"], r.status

    seen = dict(await asyncio.gather(*(one(i) for i in range(n))))
    store = open_store(store_config(section), apply_schema=False)
    await asyncio.to_thread(wait_for, lambda: count(store) >= n, 60, "all events shipped")
    await asyncio.sleep(0.3)  # anything extra would show up now
    rows = store.select(
        f"SELECT request_id, status, seq, decision, subject_ids FROM {store.database}.access_events"
    )
    assert len(rows) == n
    assert {r["request_id"]: r["status"] for r in rows} == seen
    numbers = chain_numbers(store)  # each access and each outcome record, once, no holes
    assert numbers == list(range(1, len(numbers) + 1))
    assert sum(1 for r in rows if r["decision"] == "deny") == n // 4
    # Every event that touched subject X is one indexed lookup on access_event_subjects.
    hits = store.select(
        f"SELECT user, decision FROM {store.database}.access_event_subjects WHERE subject_id = %(s)s",
        {"s": "8"},
    )
    assert hits == [{"user": "bob", "decision": "deny"}]
    assert count(store, "access_event_subjects") == n
    assert gw.metric("pdgw_shipper_events_total") == n
    store.close()


async def test_clickhouse_killed_mid_load_and_restarted_loses_and_doubles_nothing(
    own_ch_server: ClickHouseServer,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
) -> None:
    n = 3000
    section = store_section(
        "clickhouse", fresh_database(), chdb_dir=chdb_dir, server=own_ch_server, batch_max_rows=100
    )
    gw = await make_gateway(upstream.url, store=section)
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    done = 0
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> int:
        nonlocal done
        async with sem:
            r = await gw.client.get(f"/hr/employees/{i}", headers=auth)
            await r.read()
            done += 1
            if done == n // 3:
                own_ch_server.kill()  # SIGKILL while batches are in flight
            if done == 2 * n // 3:
                await asyncio.to_thread(own_ch_server.start)
            return r.status

    statuses = await asyncio.gather(*(one(i) for i in range(n)))
    assert statuses == [200] * n  # the spool absorbed the outage: no request failed
    store = open_store(store_config(section), apply_schema=False)
    await asyncio.to_thread(wait_for, lambda: count(store) >= n, 90, "recovery")
    await asyncio.sleep(0.5)
    assert count(store) == n
    numbers = chain_numbers(store)
    assert numbers == list(range(1, len(numbers) + 1))  # no duplicates, no gaps
    assert gw.metric("pdgw_shipper_errors_total", {"kind": "store"}) >= 1
    assert gw.metric("pdgw_shipper_batches_retried_total") >= 1
    store.close()


def test_retention_drops_only_expired_partitions_and_records_each_drop(
    chdb_dir: Path, ch_server: ClickHouseServer
) -> None:
    from gateway.audit.store.retention import apply_retention

    for kind in ENGINES:
        store = _store(kind, chdb_dir, ch_server, fresh_database())
        migrate(store)
        old = _event(ts=dt.datetime(2020, 3, 15, tzinfo=dt.UTC), seq=1)
        new = _event(ts=dt.datetime.now(dt.UTC), seq=2)
        for i, ev in enumerate((old, new)):
            row, subs = event_rows(ev, f"b{i}")
            store.insert(schema.ACCESS_EVENTS, [row], f"b{i}")
            store.insert(schema.ACCESS_EVENT_SUBJECTS, subs, f"b{i}")
        cutoff = dt.date.today() - dt.timedelta(days=365)
        dropped = apply_retention(store, cutoff, actor="dpo-anna", reason="test")
        assert {(d.table, d.partition, d.rows) for d in dropped} == {
            ("access_events", "202003", 1),
            ("access_event_subjects", "202003", 1),
        }
        assert [
            r["seq"] for r in store.select(f"SELECT seq FROM {store.database}.access_events")
        ] == [2]
        acts = store.select(
            f"SELECT actor, table_name, partition, rows FROM {store.database}.retention_actions ORDER BY table_name"
        )
        assert acts == [
            {
                "actor": "dpo-anna",
                "table_name": "access_event_subjects",
                "partition": "202003",
                "rows": 1,
            },
            {"actor": "dpo-anna", "table_name": "access_events", "partition": "202003", "rows": 1},
        ], kind
        assert apply_retention(store, cutoff, actor="x", reason="again") == []
        store.close()


def _event(*, ts: dt.datetime, seq: int, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "access",
        "event_id": f"e{seq}",
        "ts_us": int(ts.timestamp() * 1e6),
        "instance": "gw-test",
        "seq": seq,
        "request_id": f"r{seq}",
        "user": "alice",
        "roles": ["hr_officer"],
        "client_ip": "127.0.0.1",
        "method": "GET",
        "path": f"/hr/employees/{seq}",
        "route": "hr-employees",
        "system": "hr",
        "category": "employee",
        "action": "read",
        "subject_ids": [str(seq)],
        "decision": "allow",
        "reason": "rule",
        "rule": "p, hr_officer, hr, employee, read",
        "policy_version": "v1",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 10,
        "duration_us": 100,
        "upstream_us": 50,
        "outcome": "complete",
        "v": 1,
    }
    ev.update(over)
    return ev


def test_cluster_ddl_has_replicated_locals_and_distributed_tables() -> None:
    """Cluster mode is DDL only here: no ZooKeeper/Keeper can run on these machines, so the
    statements are checked as text, not executed on a cluster."""
    stmts = schema.schema_ddl("pd_audit", modern=True, cluster="audit")
    assert stmts[0] == "CREATE DATABASE IF NOT EXISTS pd_audit ON CLUSTER audit"
    creates = [s for s in stmts if s.startswith("CREATE TABLE")]
    assert all(" ON CLUSTER audit" in s for s in creates)
    for t in ("access_events", "access_event_subjects", "permission_changes", "retention_actions"):
        local = next(s for s in creates if f"pd_audit.{t}_local " in s)
        engine = (
            "ReplicatedReplacingMergeTree" if t == "permission_changes" else "ReplicatedMergeTree"
        )
        assert (
            f"ENGINE = {engine}('/clickhouse/tables/{{shard}}/pd_audit/{t}_local', '{{replica}}')"
            in local
        )
        dist = next(s for s in creates if f"pd_audit.{t} ON CLUSTER" in s)
        assert f"ENGINE = Distributed(audit, pd_audit, {t}_local, " in dist
    assert "cityHash64(subject_id)" in next(
        s for s in creates if "pd_audit.access_event_subjects ON" in s
    )


async def test_readiness_stays_up_during_a_store_outage_until_the_spool_limit(
    own_ch_server: ClickHouseServer,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
) -> None:
    own_ch_server.kill()
    section = store_section("clickhouse", fresh_database(), chdb_dir=chdb_dir, server=own_ch_server)
    gw = await make_gateway(upstream.url, store=section, audit={"max_spool_bytes": 256 * 1024})
    from gateway.runtime.app import GATEWAY

    gateway = gw.client.app[GATEWAY]  # type: ignore[index]
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    statuses = []
    for i in range(2500):
        r = await gw.client.get(f"/hr/employees/{i}", headers=auth)
        statuses.append(r.status)
        if r.status == 503:
            break
    assert statuses[0] == 200 and statuses[-1] == 503  # the spool absorbed, then the limit applied
    assert gateway.readiness()["spool_writable"] is False
    body = await r.json()
    assert body["error"] == "audit_unavailable"
    # The store comes back: the spool drains and requests are served again.
    await asyncio.to_thread(own_ch_server.start)
    await asyncio.to_thread(
        wait_for, lambda: gateway.spool.backlog_bytes < 256 * 1024, 60, "spool drained"
    )
    assert (await gw.client.get("/hr/employees/1", headers=auth)).status == 200
    _ = aiohttp


class InsertBlackhole:
    """A TCP relay to ClickHouse that, once, lets an INSERT's data reach the server and then
    drops everything the server answers: the insert is committed, the client only sees a
    timeout (the ambiguous outcome)."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.armed = True
        self.triggered = False
        self.sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            state = {"insert": False, "sample_back": False, "data_sent": False, "swallowing": False}
            threading.Thread(
                target=self._pump, args=(client, server, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, state, False), daemon=True
            ).start()

    def _pump(self, src: Any, dst: Any, state: dict[str, bool], upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                # INSERT query → the server's sample block → the client's data → the server's
                # confirmation, which is the one thing swallowed (on one connection, once).
                if upstream:
                    if self.armed and b"INSERT INTO" in data:
                        state["insert"] = True
                    elif state["sample_back"]:
                        state["data_sent"] = True
                    dst.sendall(data)
                elif state["swallowing"] or (state["data_sent"] and self.armed):
                    state["swallowing"] = True
                    self.armed = False
                    self.triggered = True
                else:
                    if state["insert"]:
                        state["sample_back"] = True
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        for s in [self.listener, *self.sockets]:
            s.close()


def _write_spool(directory: Path, events: list[dict[str, Any]], *, outcomes: bool = True) -> None:
    """A spool as a gateway of the first releases left it (record version 1: named JSON
    objects, no chain): a start record, then access and outcome records. Replay and the
    shipper still read such spools."""
    from gateway.audit.spool import Spool

    def encode(record: dict[str, Any]) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    spool = Spool(directory, instance=events[0]["instance"])
    spool.open()
    spool.close()
    (segment,) = sorted(directory.glob("*.jsonl"))[-1:]
    with segment.open("ab") as f:
        for ev in events:
            f.write(encode({**ev, "outcome": "pending", "status": 0}))
            if outcomes:
                f.write(
                    encode(
                        {
                            "kind": "outcome",
                            "event_id": ev["event_id"],
                            "seq": ev["seq"],
                            "status": 200,
                            "bytes_in": 0,
                            "bytes_out": 10,
                            "duration_us": 100,
                            "upstream_us": 50,
                            "outcome": "complete",
                        }
                    )
                )


def test_timeout_after_the_server_accepted_an_insert_does_not_duplicate(
    tmp_path: Path, chdb_dir: Path, ch_server: ClickHouseServer
) -> None:
    from gateway.audit.shipping.shipper import Shipper, ShipperMetrics

    now = dt.datetime.now(dt.UTC)
    n = 500
    _write_spool(tmp_path / "spool", [_event(ts=now, seq=i) for i in range(1, n + 1)])
    relay = InsertBlackhole(ch_server.tcp_port)
    database = fresh_database()
    direct = _store("clickhouse", chdb_dir, ch_server, database)
    migrate(direct)
    section = store_section(
        "clickhouse", database, chdb_dir=chdb_dir, server=ch_server, send_receive_timeout_seconds=2
    )
    section["hosts"] = [f"127.0.0.1:{relay.port}"]
    retried: list[int] = []
    found: list[int] = []
    metrics = ShipperMetrics(
        retried=lambda: retried.append(1), already_stored=lambda: found.append(1)
    )
    shipper = Shipper(
        tmp_path / "spool",
        lambda: open_store(store_config(section), apply_schema=False),
        batch_max_rows=10_000,
        metrics=metrics,
    )
    shipper.acquire()
    try:
        assert shipper.run(follow=False) == n
    finally:
        shipper.release()
        relay.close()
    assert relay.triggered, "the relay never swallowed a confirmation: the scenario did not happen"
    assert retried  # the shipper saw a failure and came back
    assert found == [1]  # ... and found the swallowed insert already stored: not sent again
    seqs = [r["seq"] for r in direct.select(f"SELECT seq FROM {database}.access_events")]
    assert sorted(seqs) == list(range(1, n + 1))  # exactly once
    assert count(direct, "access_event_subjects") == n
    direct.close()


@pytest.mark.parametrize("kind", ENGINES)
def test_audit_replay_ships_a_dead_instances_spool_once_with_lost_outcomes_unknown(
    kind: str, tmp_path: Path, chdb_dir: Path, ch_server: ClickHouseServer
) -> None:

    from tests.conftest import ROOT

    now = dt.datetime.now(dt.UTC)
    spool = tmp_path / "dead-spool"
    _write_spool(spool, [_event(ts=now, seq=i) for i in range(1, 101)])
    _write_spool(spool, [_event(ts=now, seq=101)], outcomes=False)  # died before its outcome
    database = fresh_database()
    section = store_section(
        kind,
        database,
        chdb_dir=tmp_path / "replay-chdb" if kind == "embedded" else chdb_dir,
        server=ch_server,
    )
    from tests.conftest import replay_config

    path = replay_config(tmp_path, section)
    for _ in range(2):  # twice: the second run finds nothing new
        out = run_cli("audit", "replay", "--spool", str(spool), "--config", str(path))
        assert out.returncode == 0, out.stderr
    assert "0 events shipped" in out.stdout
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import json,sys; from gateway.audit.store.factory import open_store; from tests.stores import store_config;"
                f"s=open_store(store_config(json.loads(sys.argv[1])), apply_schema=False);"
                f"print(json.dumps(s.select('SELECT seq, outcome FROM {database}.access_events ORDER BY seq')))"
            ),
            json.dumps(section),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert reader.returncode == 0, reader.stderr
    rows = json.loads(reader.stdout)
    assert [r["seq"] for r in rows] == list(range(1, 102))
    assert [r["outcome"] for r in rows] == ["complete"] * 100 + ["unknown"]


@pytest.mark.timeout(300)  # waits up to 90 s for shipping after a restart
async def test_gateway_killed_mid_shipping_and_restarted_loses_and_doubles_nothing(
    ch_server: ClickHouseServer, tmp_path: Path, keys: Keys, upstream: Upstream, chdb_dir: Path
) -> None:
    from tests.process import run_gateway

    n = 1500
    database = fresh_database()
    # Small batches keep the shipper busy well after the last response.
    section = store_section(
        "clickhouse", database, chdb_dir=chdb_dir, server=ch_server, batch_max_rows=5
    )
    reader = _store("clickhouse", chdb_dir, ch_server, database)
    token = keys.token("alice", ["hr_officer"])
    with run_gateway(tmp_path, keys, upstream.url, store=section) as gp:
        async with aiohttp.ClientSession() as s:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> int:
                async with (
                    sem,
                    s.get(
                        f"{gp.url}/hr/employees/{i}", headers={"Authorization": f"Bearer {token}"}
                    ) as r,
                ):
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(n)))
        assert statuses == [200] * n
        gp.kill()  # SIGKILL the supervisor while it ships (its worker stops with it)
    shipped_before = count(reader)
    assert shipped_before < n, "the shipper had already finished: the scenario did not happen"
    with run_gateway(tmp_path, keys, upstream.url, store=section):
        await asyncio.to_thread(wait_for, lambda: count(reader) >= n, 90, "shipping after restart")
        await asyncio.sleep(0.5)
    assert count(reader) == n
    numbers = chain_numbers(reader)
    assert numbers == list(range(1, len(numbers) + 1))  # no duplicates, no gaps
    assert count(reader, "access_event_subjects") == n
    # The chain carried on across the SIGKILL and the restart, and matches what was signed.
    from gateway.audit.checkpoint import load_public_keys
    from gateway.audit.verify import verify_store

    report = verify_store(reader, load_public_keys([tmp_path / "checkpoint-key.pub"]))
    assert report.ok, report.problems
    # Every access is the serving worker's record; the supervisor's chain holds none of them.
    records = {i.instance: i.records for i in report.instances}
    assert records["gw-test-w0"] == len(numbers) and records.get("gw-test", 0) == 0
    reader.close()


def _read_embedded(path: Path, database: str, sql: str) -> list[dict[str, Any]]:
    """Query a chdb directory from a process of its own (chdb: one directory per process)."""
    from tests.conftest import ROOT

    code = (
        "import json,sys; from pathlib import Path; from gateway.audit.store.embedded import EmbeddedStore;"
        "s=EmbeddedStore(Path(sys.argv[1]), sys.argv[2]); print(json.dumps(s.select(sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), database, sql],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


@pytest.mark.timeout(300)  # waits up to 90 s for shipping after a restart
async def test_gateway_with_embedded_store_killed_mid_shipping_loses_and_doubles_nothing(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    import signal
    import urllib.request

    from tests.process import run_gateway

    n = 1000
    database = "audit"
    chdb_path = tmp_path / "chdb"
    section = store_section("embedded", database, chdb_dir=chdb_path, server=None, batch_max_rows=5)
    token = keys.token("alice", ["hr_officer"])
    with run_gateway(tmp_path, keys, upstream.url, store=section) as gp:
        async with aiohttp.ClientSession() as s:
            for i in range(n):
                async with s.get(
                    f"{gp.url}/hr/employees/{i}", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    assert r.status == 200
        gp.kill()  # SIGKILL the supervisor: the chdb directory is released with it
    shipped_before = _read_embedded(
        chdb_path, database, f"SELECT count() AS n FROM {database}.access_events"
    )
    assert shipped_before[0]["n"] < n, (
        "the shipper had already finished: the scenario did not happen"
    )

    def caught_up(admin: str) -> bool:
        """No backlog in any spool (the supervisor's and the worker's, decision 030)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(admin + "/metrics") as r:
            text = r.read().decode()
        backlogs = [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "pdgw_spool_backlog_bytes"
        ]
        return len(backlogs) == 2 and sum(backlogs) == 0.0

    with run_gateway(tmp_path, keys, upstream.url, store=section) as gp:
        await asyncio.to_thread(wait_for, lambda: caught_up(gp.admin), 90, "shipping after restart")
        assert gp.kill(signal.SIGTERM) == 0
    rows = _read_embedded(
        chdb_path,
        database,
        f"SELECT seq AS n FROM {database}.access_events UNION ALL "
        f"SELECT outcome_seq AS n FROM {database}.access_events WHERE outcome_seq > 0",
    )
    numbers = sorted(int(r["n"]) for r in rows)
    assert numbers == list(range(1, len(numbers) + 1))  # no duplicates, no gaps


def test_a_shipper_that_hits_a_bug_restarts_from_its_saved_state(
    tmp_path: Path, chdb_dir: Path
) -> None:
    """Fault injection: a wrapper around the real embedded store raises an unexpected error
    (not a StoreError) on the first insert; shipping resumes and nothing is doubled."""
    from gateway.audit.shipping.shipper import Shipper, ShipperMetrics

    now = dt.datetime.now(dt.UTC)
    _write_spool(tmp_path / "spool", [_event(ts=now, seq=i) for i in range(1, 51)])
    section = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    real = open_store(store_config(section))
    faults = [RuntimeError("injected bug")]

    class Faulty:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def insert(self, *args: Any, **kwargs: Any) -> None:
            if faults:
                raise faults.pop()
            real.insert(*args, **kwargs)

        def close(self) -> None:
            pass

    errors: list[str] = []
    shipper = Shipper(
        tmp_path / "spool",
        lambda: Faulty(),
        max_backoff=0.1,  # type: ignore[arg-type,return-value]
        metrics=ShipperMetrics(error=errors.append),
    )
    shipper.start()
    try:
        wait_for(lambda: count(real) >= 50, 30, "shipping after the bug")
    finally:
        shipper.stop()
    assert "crashed" in errors
    assert sorted(
        r["seq"] for r in real.select(f"SELECT seq FROM {real.database}.access_events")
    ) == list(range(1, 51))
    real.close()


def test_replay_refuses_a_spool_a_running_gateway_is_writing(tmp_path: Path) -> None:
    from gateway.audit.spool import Spool
    from tests.conftest import ROOT

    spool = Spool(tmp_path / "live")
    spool.open()
    try:
        out = run_cli(
            "audit",
            "replay",
            "--spool",
            str(tmp_path / "live"),
            "--config",
            str(ROOT / "deploy/local/gateway.yaml"),
        )
    finally:
        spool.close()
    assert out.returncode == 1 and "a running gateway is writing this spool" in out.stderr


def _json_each_row(table: schema.Table, rows: list[dict[str, Any]]) -> str:
    """The embedded store's former encoding (one JSON object per row), kept as the reference
    the Arrow insert must match (docs/decisions/017-store-insert.md)."""

    def default(value: Any) -> str:
        if isinstance(value, dt.datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert isinstance(value, dt.date)
        return value.isoformat()

    names = table.column_names
    return "\n".join(json.dumps({n: r[n] for n in names}, default=default) for r in rows)


def test_embedded_arrow_insert_stores_exactly_what_json_each_row_stored(chdb_dir: Path) -> None:
    from gateway.audit.store.embedded import EmbeddedStore

    now = dt.datetime.now(dt.UTC)
    tricky = "é\x00\n\t\\'\"😀 ⟨subject⟩"
    events = [
        _event(ts=now, seq=1),
        _event(
            ts=now + dt.timedelta(microseconds=7),
            seq=2**64 - 1,  # UInt64 beyond 2**63
            path=f"/hr/{tricky}",
            roles=[],
            subject_ids=["a", tricky],
            bytes_out=2**63,
            response_subjects=["b"],
            response_capped=1,
            outcome_seq=3,
            outcome_hash="f" * 64,
            hash="0" * 64,
        ),
        {**_event(ts=now, seq=3), "rule": None, "roles": None},  # null: the column's default
    ]
    tables: dict[schema.Table, list[dict[str, Any]]] = {
        schema.ACCESS_EVENTS: [],
        schema.ACCESS_EVENT_SUBJECTS: [],
    }
    for ev in events:
        row, subjects = event_rows(ev, "b1")
        tables[schema.ACCESS_EVENTS].append(row)
        tables[schema.ACCESS_EVENT_SUBJECTS] += subjects
    tables[schema.RETENTION_ACTIONS] = [  # DateTime and Date columns
        {
            "ts": now.replace(microsecond=0),
            "actor": tricky,
            "table_name": "access_events",
            "partition": "202611",
            "rows": 5,
            "cutoff": now.date(),
            "reason": "r",
        }
    ]
    arrow, reference = fresh_database(), fresh_database()
    store = _store("embedded", chdb_dir, None, arrow)
    assert isinstance(store, EmbeddedStore)
    migrate(store)
    store.execute(f"CREATE DATABASE {reference}")
    for table, rows in tables.items():
        store.execute(f"CREATE TABLE {reference}.{table.name} AS {arrow}.{table.name}")
        store.insert(table, rows, "b1")
        cols = ", ".join(f"`{n}`" for n in table.column_names)
        body = _json_each_row(table, rows)
        store.execute(f"INSERT INTO {reference}.{table.name} ({cols}) FORMAT JSONEachRow\n{body}")

        def dump(db: str, table: schema.Table = table) -> str:
            sql = (
                f"SELECT * FROM {db}.{table.name} ORDER BY ALL FORMAT TabSeparatedWithNamesAndTypes"
            )
            return store._query(sql, "TabSeparated")

        assert dump(arrow) == dump(reference), table.name
        assert dump(arrow).count("\n") == len(rows) + 2
    store.close()


def test_every_column_of_the_schema_has_an_arrow_type() -> None:
    from gateway.audit.store.embedded import arrow_type

    # The dashboards' aggregate tables are filled by the store itself (materialized views).
    filled_by_store = {a.table.name for a in schema.AGGREGATES}
    tables = [
        v
        for v in vars(schema).values()
        if isinstance(v, schema.Table) and v.name not in filled_by_store
    ]
    assert len(tables) >= 10
    for table in tables:
        for name, kind in table.columns:
            assert arrow_type(schema.column_type(kind, True)) is not None, (table.name, name)
