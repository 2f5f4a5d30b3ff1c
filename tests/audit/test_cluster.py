"""The audit store on a real ClickHouse cluster: ZooKeeper and two Debian clickhouse-server 18.16
processes on loopback, one shard with two replicas (gateway.testing.chcluster). `clickhouse init
--cluster` (migrations 1-3 with ON CLUSTER DDL, and the upgrade from a first-release schema),
shipping exactly once through the Distributed tables, replication, a replica killed under load,
and `audit verify` on the cluster."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, event_rows, migrate
from gateway.audit.store.clickhouse import ClickHouseParams, ClickHouseStore
from gateway.config.model import AnomaliesConfig, Thresholds
from gateway.governance.anomalies import US, Detector
from gateway.testing.chcluster import ClickHouseCluster
from gateway.testing.chcluster import available as zookeeper_available
from gateway.testing.chserver import available as server_available
from tests.conftest import GatewayFactory, Keys, Upstream, config_dict, run_cli, write_config
from tests.stores import chain_numbers, count, fresh_database, wait_for

CLUSTER = "audit"


@pytest.fixture(scope="module")
def ch_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    if not (server_available() and zookeeper_available()):
        pytest.fail(
            "clickhouse-server and zookeeper are required (Debian packages); "
            "`make test` installs them"
        )
    cluster = ClickHouseCluster(tmp_path_factory.mktemp("cluster"), CLUSTER)
    cluster.start()
    yield cluster
    cluster.stop()


def _section(cluster: ClickHouseCluster, database: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "clickhouse",
        "database": database,
        "hosts": cluster.hosts,
        "cluster": CLUSTER,
        "batch_max_age_ms": 50,
        "send_receive_timeout_seconds": 5,
        "connect_timeout_seconds": 1,
        "retry_max_backoff_seconds": 1,
        **extra,
    }


def _node(cluster: ClickHouseCluster, i: int, database: str) -> ClickHouseStore:
    """A connection to node ``i`` alone (no failover), to see what that replica holds."""
    port = cluster.servers[i].tcp_port
    return ClickHouseStore(ClickHouseParams(hosts=(("127.0.0.1", port),), database=database))


def _local_rows(cluster: ClickHouseCluster, i: int, database: str) -> int:
    node = _node(cluster, i, database)
    try:
        return count(node, "access_events_local")
    finally:
        node.close()


def _tables(store: AuditStore, database: str | None = None) -> dict[str, str]:
    rows = store.select(
        "SELECT name, engine FROM system.tables WHERE database = %(db)s",
        {"db": database or store.database},
    )
    return {str(r["name"]): str(r["engine"]) for r in rows}


def test_clickhouse_init_on_cluster_makes_replicated_tables_and_views_on_every_node(
    ch_cluster: ClickHouseCluster, tmp_path: Path, keys: Keys
) -> None:
    db = fresh_database()
    data = config_dict(tmp_path, "http://127.0.0.1:1", store=_section(ch_cluster, db))
    path = write_config(tmp_path, data, keys)
    first = run_cli("clickhouse", "init", "--config", str(path), "--cluster", CLUSTER)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "legacy types" in first.stdout
    versions = [m.version for m in schema.MIGRATIONS]
    assert f"applied migrations {versions}" in first.stdout
    again = run_cli("clickhouse", "init", "--config", str(path), "--cluster", CLUSTER)
    assert again.returncode == 0 and "schema up to date" in again.stdout, again.stderr
    # Every migration run again, as when a replica read did not yet see their records: the
    # table migration 2 renamed away is not made again (its replica path is in the keeper).
    forget = ClickHouseStore(ClickHouseParams(tuple(_hosts(ch_cluster)), db, cluster=CLUSTER))
    for name in ("schema_migrations", "schema_migrations_local"):
        forget.execute(f"DROP TABLE {db}.{name} ON CLUSTER {CLUSTER}")
    forget.close()
    rerun = run_cli("clickhouse", "init", "--config", str(path), "--cluster", CLUSTER)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"applied migrations {versions}" in rerun.stdout
    for i in range(2):
        node = _node(ch_cluster, i, db)
        tables = _tables(node)
        for table in (t for m in schema.MIGRATIONS for t in m.tables):
            if table is schema.PERMISSION_CHANGES_V1:
                continue
            assert tables[f"{table.name}_local"] == f"Replicated{table.engine}", table.name
            assert tables[table.name] == "Distributed", table.name
        assert tables["anomalies_local"] == "ReplicatedReplacingMergeTree"
        assert tables["permission_changes"] == "View"
        assert tables["permission_changes_v1_local"] == "ReplicatedReplacingMergeTree"
        # The dashboards' aggregates (decision 026): replicated, fed on every node.
        dashboards = _tables(node, f"{db}_dashboards")
        for agg in schema.AGGREGATES:
            engine = agg.table.engine
            assert dashboards[f"{agg.table.name}_local"] == f"Replicated{engine}"
            assert dashboards[agg.table.name] == "Distributed"
            assert dashboards[f"{agg.table.name}_mv"] == "MaterializedView"
        node.close()
    # Check-before-retry reads what it wrote: an insert through the Distributed table
    # (insert_distributed_sync=1) is counted by the very next query, on either node.
    store = ClickHouseStore(
        ClickHouseParams(hosts=tuple(_hosts(ch_cluster)), database=db, cluster=CLUSTER)
    )
    rows = [event_rows(_event(i), "batch-x")[0] for i in range(50)]
    store.insert(schema.ACCESS_EVENTS, rows, "batch-x")
    assert store.batch_rows(schema.ACCESS_EVENTS, "batch-x") == 50
    # A batch sent again (its confirmation lost) is dropped by the replicated table's block
    # deduplication as well: the same rows in the same order make the same block.
    store.insert(schema.ACCESS_EVENTS, rows, "batch-x")
    assert store.batch_rows(schema.ACCESS_EVENTS, "batch-x") == 50
    store.close()
    # The replica that took the insert aggregated it; replication gives every node the counts.
    sql = f"SELECT sum(accesses) AS n FROM {db}_dashboards.access_counts_local"
    for i in range(2):
        node = _node(ch_cluster, i, db)

        def counted(node: AuditStore = node) -> bool:
            return int(node.select(sql)[0]["n"] or 0) == 50

        wait_for(counted, what=f"node {i}'s aggregates")
        node.close()


def _hosts(cluster: ClickHouseCluster) -> list[tuple[str, int]]:
    return [("127.0.0.1", s.tcp_port) for s in cluster.servers]


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "ts_us": 1_780_000_000_000_000 + i,
        "instance": "gw-x",
        "seq": i + 1,
        "user": "alice",
        "subject_ids": [str(i)],
        "decision": "allow",
    }


def test_first_release_schema_on_a_cluster_is_upgraded_by_migration_2(
    ch_cluster: ClickHouseCluster,
) -> None:
    """Migration 2's cluster branches: ALTER … ON CLUSTER ADD COLUMN on the local and the
    Distributed tables, RENAME … ON CLUSTER of the replaced table, the copy of its rows, and the
    view made on every node."""
    db = fresh_database()
    store = ClickHouseStore(
        ClickHouseParams(
            hosts=tuple(_hosts(ch_cluster)),
            database=db,
            cluster=CLUSTER,
        )
    )
    # The first release's schema: access_events without the columns added since.
    old_columns = tuple(
        c for c in schema.ACCESS_EVENTS.columns if c[0] not in _added_by_migration_2()
    )
    old_events = schema.Table(
        "access_events",
        old_columns,
        schema.ACCESS_EVENTS.order_by,
        schema.ACCESS_EVENTS.partition_by,
        schema.ACCESS_EVENTS.shard_key,
    )
    for sql in schema.bootstrap_ddl(db, modern=False, cluster=CLUSTER):
        store.execute(sql)
    for table in (old_events, *schema.MIGRATIONS[0].tables[1:]):
        for sql in schema.create_table(table, db, modern=False, cluster=CLUSTER):
            store.execute(sql)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    first = {"version": 1, "name": "first release", "applied_at": now, "variant": "legacy"}
    store.insert(schema.MIGRATIONS_TABLE, [first], "migration-1")
    change = {name: "" for name in schema.PERMISSION_CHANGES_V1.column_names}
    change.update(change_id="c1", ts=now, ts_us=1, instance="gw-old", kind="grant", user="carol")
    store.insert(schema.PERMISSION_CHANGES_V1, [change], "b1")
    assert migrate(store, cluster=CLUSTER) == [m.version for m in schema.MIGRATIONS[1:]]
    assert migrate(store, cluster=CLUSTER) == []
    for i in range(2):
        node = _node(ch_cluster, i, db)
        cols = {
            str(r["name"])
            for r in node.select(
                "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
                {"db": db, "t": "access_events_local"},
            )
        }
        assert set(schema.ACCESS_EVENTS.column_names) <= cols
        tables = _tables(node)
        assert tables["permission_changes"] == "View"
        assert tables["permission_changes_v1"] == "Distributed"
        # The first release's change, copied into the records table and counted once.
        wait_for(lambda n=node: _changes(n) == [("c1", "carol")], 30, f"node {i} replicated")
        node.close()
    store.close()


def _added_by_migration_2() -> set[str]:
    return {
        "auth",
        "session",
        "response_subjects",
        "response_count",
        "response_capped",
        "record_v",
        "hash",
        "outcome_seq",
        "outcome_hash",
    }


def _changes(store: AuditStore) -> list[tuple[str, str]]:
    rows = store.select(f"SELECT change_id, user FROM {store.database}.permission_changes")
    return [(str(r["change_id"]), str(r["user"])) for r in rows]


async def test_gateway_ships_to_the_cluster_exactly_once_through_a_replica_killed_under_load(
    ch_cluster: ClickHouseCluster,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """The replica the gateway inserts through is SIGKILLed mid-load: the client fails over to
    the other, check-before-retry reads what the surviving replica holds, and once the killed
    replica is back both hold every row exactly once; `audit verify` passes on the cluster."""
    n = 1500
    db = fresh_database()
    # The schema first, from a deploy job as the operator guide says (the pods do not apply it).
    init = ClickHouseStore(ClickHouseParams(tuple(_hosts(ch_cluster)), db, cluster=CLUSTER))
    migrate(init, cluster=CLUSTER)
    init.close()
    section = _section(ch_cluster, db, batch_max_rows=100, apply_schema=False)
    gw = await make_gateway(upstream.url, store=section, audit={"checkpoint_interval_seconds": 0.5})
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    first = ch_cluster.servers[0]
    done = 0
    seen: dict[str, int] = {}
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> int:
        nonlocal done
        async with sem:
            r = await gw.client.get(f"/hr/employees/{i}", headers=auth)
            await r.read()
            done += 1
            if done == n // 3:
                first.kill()  # SIGKILL while batches are in flight
                seen["at_kill"] = await asyncio.to_thread(_local_rows, ch_cluster, 1, db)
            if done == 2 * n // 3:
                await asyncio.sleep(0.5)  # let the shipper catch up on the survivor
                seen["before_restart"] = await asyncio.to_thread(_local_rows, ch_cluster, 1, db)
                await asyncio.to_thread(first.start)
            return r.status

    statuses = await asyncio.gather(*(one(i) for i in range(n)))
    assert statuses == [200] * n
    # Shipping went on through the surviving replica while the first was dead.
    assert seen["before_restart"] > seen["at_kill"], seen
    await gw.client.close()  # final checkpoint signed and shipped
    nodes = [_node(ch_cluster, i, db) for i in range(2)]
    try:
        for i, node in enumerate(nodes):  # each replicated table catches up on its own queue
            for table in ("access_events_local", "access_event_subjects_local"):
                await asyncio.to_thread(
                    wait_for, lambda s=node, t=table: count(s, t) >= n, 90, f"{table} on {i}"
                )
        await asyncio.sleep(0.5)
        for node in nodes:
            assert count(node, "access_events_local") == n
            assert count(node, "access_event_subjects_local") == n
            numbers = chain_numbers(node)
            assert numbers == list(range(1, len(numbers) + 1))  # nothing lost, nothing doubled
    finally:
        for node in nodes:  # a failure above must not leak connections into later tests
            node.close()
    verify = run_cli(
        "audit",
        "verify",
        "--config",
        str(tmp_path / "gateway.yaml"),
        "--public-key",
        str(tmp_path / "checkpoint-key.pub"),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "chain intact" in verify.stdout
    # The anomaly detectors on the cluster: through the Distributed tables, recorded in the
    # replicated anomalies table once, whichever node each replica's detector talks to.
    hour = 3600 * US
    cfg = AnomaliesConfig(  # working hours at any time: bulk access is the point here
        window_seconds=3600,
        thresholds={"default": Thresholds()},
        work_days=(1, 2, 3, 4, 5, 6, 7),
        work_start_minute=0,
        work_end_minute=24 * 60,
    )
    start = (time.time_ns() // 1000) // hour * hour
    for i, node in enumerate(ch_cluster.servers):
        store = ClickHouseStore(
            ClickHouseParams(hosts=(("127.0.0.1", node.tcp_port),), database=db, cluster=CLUSTER)
        )
        found = Detector(cfg, store, f"gw-{i}").judge_window(start)
        found += Detector(cfg, store, f"gw-{i}").judge_window(start - hour)
        assert [(d.kind, d.user) for d in found] == ([("bulk_access", "alice")] if i == 0 else [])
        store.close()
