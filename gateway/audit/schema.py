"""The audit store's schema: tables, columns, versioned migrations, single-node or cluster DDL.

One DDL source for two kinds of engine (docs/decisions/004-audit-schema.md):
- ``modern`` (ClickHouse ≥ 20.1: production 22.8+, and chdb): LowCardinality for the enumerated
  columns, DateTime64(6) for the event time;
- ``legacy`` (Debian's clickhouse-server 18.16, the only real server installable here): String
  and DateTime. The exact time is ``ts_us`` (UInt64 µs since the epoch) on both, so every query
  the gateway and investigators run is the same text on both.
Retention is by monthly partition, dropped by `pd-gateway clickhouse retention` and recorded in
``retention_actions`` (4.7-4.9, 7.3) — not TTL, whose deletions leave no record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LC = "LC"  # placeholder: LowCardinality(String) on modern engines, String on legacy ones
TS = "TS"  # placeholder: DateTime64(6, 'UTC') on modern engines, DateTime('UTC') on legacy ones


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: str
    partition_by: str | None
    shard_key: str  # for Distributed tables in cluster mode
    # "ReplacingMergeTree" collapses rows with the same ORDER BY key (used where several
    # gateway replicas may record the same fact); queries on such a table use FINAL.
    engine: str = "MergeTree"
    column_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(name for name, _ in self.columns))


ACCESS_EVENTS = Table(
    "access_events",
    (
        ("event_id", "String"),
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("request_id", "String"),
        ("user", "String"),
        ("roles", "Array(String)"),
        ("client_ip", "String"),
        ("method", LC),
        ("path", "String"),
        ("route", LC),
        ("system", LC),
        ("category", LC),
        ("action", LC),
        ("subject_ids", "Array(String)"),
        ("decision", LC),
        ("reason", LC),
        ("rule", "String"),
        ("policy_version", LC),
        ("status", "UInt16"),
        ("bytes_in", "UInt64"),
        ("bytes_out", "UInt64"),
        ("duration_us", "UInt64"),
        ("upstream_us", "UInt64"),
        ("outcome", LC),
        ("batch_id", "String"),
    ),
    # Day first: time-range scans prune by the key; user second: one person's accesses within
    # those days are contiguous (9.1.6 investigations); months are partitions (retention).
    order_by="(toDate(ts), user, ts_us)",
    partition_by="toYYYYMM(ts)",
    shard_key="cityHash64(user)",
)

# "Every event that touched subject X" (6.1.1, 6.3) is one indexed range on this table.
ACCESS_EVENT_SUBJECTS = Table(
    "access_event_subjects",
    (
        ("subject_id", "String"),
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("event_id", "String"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("user", "String"),
        ("system", LC),
        ("category", LC),
        ("action", LC),
        ("decision", LC),
        ("status", "UInt16"),
        ("batch_id", "String"),
    ),
    order_by="(subject_id, ts_us)",
    partition_by="toYYYYMM(ts)",
    shard_key="cityHash64(subject_id)",
)

# 9.2.7: every change of an employee's access rights. Replicas reloading the same policy files
# record the same change under the same change_id; the table keeps one (query with FINAL).
PERMISSION_CHANGES = Table(
    "permission_changes",
    (
        ("change_id", "String"),
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("actor", "String"),
        ("kind", LC),
        ("role", "String"),
        ("user", "String"),
        ("rule_before", "String"),
        ("rule_after", "String"),
        ("policy_version_before", "String"),
        ("policy_version_after", "String"),
        ("reason", "String"),
        ("source", LC),
        ("batch_id", "String"),
    ),
    order_by="change_id",
    partition_by=None,
    shard_key="cityHash64(change_id)",
    engine="ReplacingMergeTree",
)

# 7.3: dropping expired audit partitions is itself an act that is recorded. Never partitioned,
# never dropped by retention.
RETENTION_ACTIONS = Table(
    "retention_actions",
    (
        ("ts", "DateTime('UTC')"),
        ("actor", "String"),
        ("table_name", "String"),
        ("partition", "String"),
        ("rows", "UInt64"),
        ("cutoff", "Date"),
        ("reason", "String"),
    ),
    order_by="(ts, table_name, partition)",
    partition_by=None,
    shard_key="rand()",
)

MIGRATIONS_TABLE = Table(
    "schema_migrations",
    (
        ("version", "UInt32"),
        ("name", "String"),
        ("applied_at", "DateTime('UTC')"),
        ("variant", "String"),
    ),
    order_by="version",
    partition_by=None,
    shard_key="rand()",
)

RETAINED_TABLES = (ACCESS_EVENTS, ACCESS_EVENT_SUBJECTS)  # permission changes are kept


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    tables: tuple[Table, ...]


MIGRATIONS = (
    Migration(
        1,
        "audit trail: access_events, access_event_subjects, permission_changes, retention_actions",
        (ACCESS_EVENTS, ACCESS_EVENT_SUBJECTS, PERMISSION_CHANGES, RETENTION_ACTIONS),
    ),
)


def is_modern(version: str) -> bool:
    """Modern types need ClickHouse ≥ 20.1 (DateTime64); LowCardinality is GA from 19.x."""
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return tuple(parts) >= (20, 1)


def column_type(kind: str, modern: bool) -> str:
    if kind == LC:
        return "LowCardinality(String)" if modern else "String"
    if kind == TS:
        return "DateTime64(6, 'UTC')" if modern else "DateTime('UTC')"
    return kind


def create_table(
    table: Table, database: str, *, modern: bool, cluster: str | None = None
) -> list[str]:
    """DDL for one table: a MergeTree, or on a cluster a ReplicatedMergeTree ``<name>_local`` on
    every node plus a Distributed ``<name>`` over them."""
    cols = ",\n    ".join(f"`{n}` {column_type(t, modern)}" for n, t in table.columns)
    partition = f"\nPARTITION BY {table.partition_by}" if table.partition_by else ""
    if cluster is None:
        return [
            f"CREATE TABLE IF NOT EXISTS {database}.{table.name}\n(\n    {cols}\n)\n"
            f"ENGINE = {table.engine}(){partition}\nORDER BY {table.order_by}"
        ]
    local = f"{table.name}_local"
    zk_path = f"'/clickhouse/tables/{{shard}}/{database}/{local}'"
    return [
        f"CREATE TABLE IF NOT EXISTS {database}.{local} ON CLUSTER {cluster}\n(\n    {cols}\n)\n"
        f"ENGINE = Replicated{table.engine}({zk_path}, '{{replica}}'){partition}\n"
        f"ORDER BY {table.order_by}",
        f"CREATE TABLE IF NOT EXISTS {database}.{table.name} ON CLUSTER {cluster}\n"
        f"AS {database}.{local}\n"
        f"ENGINE = Distributed({cluster}, {database}, {local}, {table.shard_key})",
    ]


def migration_ddl(
    migration: Migration, database: str, *, modern: bool, cluster: str | None = None
) -> list[str]:
    stmts: list[str] = []
    for t in migration.tables:
        stmts += create_table(t, database, modern=modern, cluster=cluster)
    return stmts


def bootstrap_ddl(database: str, *, modern: bool, cluster: str | None = None) -> list[str]:
    """The database and the migrations table: what must exist before migrations are read."""
    on = f" ON CLUSTER {cluster}" if cluster else ""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}{on}",
        *create_table(MIGRATIONS_TABLE, database, modern=modern, cluster=cluster),
    ]


def schema_ddl(database: str, *, modern: bool, cluster: str | None = None) -> list[str]:
    """Every statement `clickhouse init` may run, in order (all idempotent)."""
    stmts = bootstrap_ddl(database, modern=modern, cluster=cluster)
    for m in MIGRATIONS:
        stmts += migration_ddl(m, database, modern=modern, cluster=cluster)
    return stmts
