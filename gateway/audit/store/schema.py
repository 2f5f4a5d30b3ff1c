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
        ("auth", LC),
        ("session", "String"),
        ("method", LC),
        ("path", "String"),
        ("query", "String"),
        ("route", LC),
        ("system", LC),
        ("category", LC),
        ("purpose", LC),  # record version 3 (migration 4): the purpose decided for (4.2, 9.2.6)
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
        ("response_subjects", "Array(String)"),
        ("response_count", "UInt64"),
        ("response_capped", "UInt8"),
        ("batch_id", "String"),
        # The chain (docs/decisions/012-hash-chain.md): the access record's version and hash,
        # and the outcome record's own sequence number and hash (0 and '' when there was none).
        ("record_v", "UInt8"),
        ("hash", "String"),
        ("outcome_seq", "UInt64"),
        ("outcome_hash", "String"),
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

# 9.2.7: every change of an employee's access rights, as each instance recorded it (chained per
# instance, so every replica's record is kept). Replicas applying the same change record the same
# change_id: read `permission_changes`, the view that counts each change once.
PERMISSION_CHANGE_RECORDS = Table(
    "permission_change_records",
    (
        ("change_id", "String"),
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
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
        ("record_v", "UInt8"),
        ("hash", "String"),
    ),
    order_by="(instance, seq)",
    partition_by=None,
    shard_key="cityHash64(instance)",
)

# The first releases' table: one row per change_id, collapsed by ReplacingMergeTree (visible
# twice until a merge unless read with FINAL). Migration 2 moves its rows into the records table.
PERMISSION_CHANGES_V1 = Table(
    "permission_changes",
    tuple(c for c in PERMISSION_CHANGE_RECORDS.columns if c[0] not in ("seq", "record_v", "hash")),
    order_by="change_id",
    partition_by=None,
    shard_key="cityHash64(change_id)",
    engine="ReplacingMergeTree",
)

# What an auditor counts: each change once, however many replicas recorded it (a plain count()
# is right). Grouped at read time, so no merge or FINAL is needed.
PERMISSION_CHANGES_VIEW = """CREATE VIEW IF NOT EXISTS {db}.permission_changes AS
SELECT
    c_change_id AS change_id,
    min(c_ts) AS ts,
    min(c_ts_us) AS ts_us,
    argMin(c_actor, c_ts_us) AS actor,
    argMin(c_kind, c_ts_us) AS kind,
    argMin(c_role, c_ts_us) AS role,
    argMin(c_user, c_ts_us) AS user,
    argMin(c_rule_before, c_ts_us) AS rule_before,
    argMin(c_rule_after, c_ts_us) AS rule_after,
    argMin(c_policy_version_before, c_ts_us) AS policy_version_before,
    argMin(c_policy_version_after, c_ts_us) AS policy_version_after,
    argMin(c_reason, c_ts_us) AS reason,
    argMin(c_source, c_ts_us) AS source,
    groupUniqArray(c_instance) AS instances
FROM (
    SELECT
        change_id AS c_change_id,
        ts AS c_ts,
        ts_us AS c_ts_us,
        instance AS c_instance,
        actor AS c_actor,
        kind AS c_kind,
        role AS c_role,
        user AS c_user,
        rule_before AS c_rule_before,
        rule_after AS c_rule_after,
        policy_version_before AS c_policy_version_before,
        policy_version_after AS c_policy_version_after,
        reason AS c_reason,
        source AS c_source
    FROM {db}.permission_change_records
)
GROUP BY c_change_id"""

# Refusals of requests with no valid token, aggregated per window (docs/decisions/013).
REFUSAL_SUMMARIES = Table(
    "refusal_summaries",
    (
        ("ts", TS),
        ("window_start_us", "UInt64"),
        ("window_end_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("route", LC),
        ("reason", LC),
        ("status", "UInt16"),
        ("client_ip", "String"),
        ("count", "UInt64"),
        ("first_ts_us", "UInt64"),
        ("last_ts_us", "UInt64"),
        ("sample_request_ids", "Array(String)"),
        ("batch_id", "String"),
        ("record_v", "UInt8"),
        ("hash", "String"),
    ),
    order_by="(toDate(ts), instance, seq)",
    partition_by="toYYYYMM(ts)",
    shard_key="cityHash64(instance)",
)

# Browser sessions' lives (decision 014): login, logout, refresh, expiry, revocation.
AUTH_EVENTS = Table(
    "auth_events",
    (
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("event_id", "String"),
        ("request_id", "String"),
        ("user", "String"),
        ("roles", "Array(String)"),
        ("client_ip", "String"),
        ("event", LC),
        ("reason", LC),
        ("session", "String"),
        ("batch_id", "String"),
        ("record_v", "UInt8"),
        ("hash", "String"),
    ),
    order_by="(toDate(ts), user, ts_us)",
    partition_by="toYYYYMM(ts)",
    shard_key="cityHash64(user)",
)

# Blocks and unblocks of data subjects (6.5, 6.6). Never dropped by retention.
SUBJECT_BLOCKS = Table(
    "subject_blocks",
    (
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("block_id", "String"),
        ("actor", "String"),
        ("action", LC),
        ("subject", "String"),
        ("reason", "String"),
        ("label", "String"),  # record version 3 (migration 4): the DPO's name for the case
        ("request_id", "String"),
        ("batch_id", "String"),
        ("record_v", "UInt8"),
        ("hash", "String"),
    ),
    order_by="(subject, ts_us)",
    partition_by=None,
    shard_key="cityHash64(subject)",
)

# Signed checkpoints of each instance's chain (Ed25519): what `audit verify` checks the
# recomputed chain against. Never partitioned, never dropped by retention.
CHAIN_CHECKPOINTS = Table(
    "chain_checkpoints",
    (
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("head", "String"),
        ("key_id", "String"),
        ("signature", "String"),
        ("batch_id", "String"),
    ),
    order_by="(instance, seq, ts_us)",
    partition_by=None,
    shard_key="cityHash64(instance)",
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

# Detections of suspicious access (9.1.6, 9.1.9, 10.2; gateway.governance.anomalies): one row per
# user, kind and window. Every gateway replica may judge the same window: the detector skips what is
# already recorded, and a race leaves rows with the same key, which ReplacingMergeTree collapses
# (read with FINAL, or count distinct anomaly_id). Never dropped by retention.
ANOMALIES = Table(
    "anomalies",
    (
        ("anomaly_id", "String"),
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("detected_us", "UInt64"),
        ("instance", LC),
        ("kind", LC),
        ("user", "String"),
        ("job_function", LC),
        ("window_start_us", "UInt64"),
        ("window_end_us", "UInt64"),
        ("count", "UInt64"),
        ("distinct_subjects", "UInt64"),
        ("threshold", "UInt64"),
        ("sample_request_ids", "Array(String)"),
        ("batch_id", "String"),
    ),
    order_by="(kind, user, window_start_us)",
    partition_by=None,
    shard_key="cityHash64(user)",
    engine="ReplacingMergeTree",
)

# Reviews of anomaly detections (9.1.6, 9.1.9; decision 025): chained records, one per review,
# the latest per anomaly its state. Never dropped by retention.
ANOMALY_REVIEWS = Table(
    "anomaly_reviews",
    (
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("review_id", "String"),
        ("anomaly_id", "String"),
        ("actor", "String"),
        ("state", LC),
        ("comment", "String"),
        ("request_id", "String"),
        ("batch_id", "String"),
        ("record_v", "UInt8"),
        ("hash", "String"),
    ),
    order_by="(anomaly_id, ts_us)",
    partition_by=None,
    shard_key="cityHash64(anomaly_id)",
)

# The register of data subjects' requests (6.3, 6.5, 6.6, 7.3; decision 029): chained records,
# one per state change, each with the request's whole state; the latest per request is the request.
# Never dropped by retention.
SUBJECT_REQUESTS = Table(
    "subject_requests",
    (
        ("ts", TS),
        ("ts_us", "UInt64"),
        ("instance", LC),
        ("seq", "UInt64"),
        ("change_id", "String"),
        ("request", "String"),
        ("state", LC),
        ("request_type", LC),
        ("subject", "String"),
        ("label", "String"),
        ("ref", "String"),
        ("received", "String"),
        ("due", "String"),
        ("block_id", "String"),
        ("outcome", "String"),
        ("act", "String"),
        ("actor", "String"),
        ("reason", "String"),
        ("request_id", "String"),
        ("batch_id", "String"),
        ("record_v", "UInt8"),
        ("hash", "String"),
    ),
    order_by="(request, ts_us)",
    partition_by=None,
    shard_key="cityHash64(request)",
)

# Aggregates for dashboards (decision 026), in a database of their own (``<database>_dashboards``)
# that a dashboard user may read when the trail's database is closed to it (9.2.6): counts per
# five minutes by system, category, action, decision, reason, job function; never a user, a
# subject, a path, a query or a client address. Filled by materialized views as the trail is
# inserted (in the inserting user's context), from the existing rows when first made.
DASHBOARDS_SUFFIX = "_dashboards"
_FIVE_MINUTES = "toStartOfFiveMinute(toDateTime(intDiv({ts}, 1000000), 'UTC'))"

ACCESS_COUNTS = Table(
    "access_counts",
    (
        ("time", "DateTime('UTC')"),
        ("system", LC),
        ("category", LC),
        ("action", LC),
        ("decision", LC),
        ("reason", LC),
        ("status", "UInt16"),
        ("accesses", "UInt64"),
    ),
    order_by="(time, system, category, action, decision, reason, status)",
    partition_by=None,
    shard_key="rand()",
    engine="SummingMergeTree",
)
JOB_FUNCTION_COUNTS = Table(
    "job_function_counts",
    (
        ("time", "DateTime('UTC')"),
        ("job_function", LC),
        ("system", LC),
        ("category", LC),
        ("decision", LC),
        ("accesses", "UInt64"),
    ),
    order_by="(time, job_function, system, category, decision)",
    partition_by=None,
    shard_key="rand()",
    engine="SummingMergeTree",
)
REFUSAL_COUNTS = Table(
    "anonymous_refusal_counts",
    (
        ("time", "DateTime('UTC')"),
        ("route", LC),
        ("reason", LC),
        ("status", "UInt16"),
        ("refusals", "UInt64"),
    ),
    order_by="(time, route, reason, status)",
    partition_by=None,
    shard_key="rand()",
    engine="SummingMergeTree",
)
# Each change of access rights once, however many replicas recorded it: a uniqExact state,
# read with uniqExactMerge(changes).
PERMISSION_CHANGE_COUNTS = Table(
    "permission_change_counts",
    (
        ("time", "DateTime('UTC')"),
        ("kind", LC),
        ("source", LC),
        ("changes", "AggregateFunction(uniqExact, String)"),
    ),
    order_by="(time, kind, source)",
    partition_by=None,
    shard_key="rand()",
    engine="AggregatingMergeTree",
)


@dataclass(frozen=True)
class Aggregate:
    """A dashboards table and the SELECT that fills it from a trail table (``{source}``)."""

    table: Table
    source: Table
    select: str


AGGREGATES = (
    Aggregate(
        ACCESS_COUNTS,
        ACCESS_EVENTS,
        f"SELECT {_FIVE_MINUTES.format(ts='ts_us')} AS time, system, category, action, decision, "
        "reason, status, count() AS accesses FROM {source} "
        "GROUP BY time, system, category, action, decision, reason, status",
    ),
    Aggregate(
        JOB_FUNCTION_COUNTS,
        ACCESS_EVENTS,
        f"SELECT {_FIVE_MINUTES.format(ts='ts_us')} AS time, "
        "arrayJoin(if(empty(roles), ['-'], roles)) AS job_function, system, category, decision, "
        "count() AS accesses FROM {source} GROUP BY time, job_function, system, category, decision",
    ),
    Aggregate(
        REFUSAL_COUNTS,
        REFUSAL_SUMMARIES,
        f"SELECT {_FIVE_MINUTES.format(ts='window_start_us')} AS time, route, reason, status, "
        "sum(count) AS refusals FROM {source} GROUP BY time, route, reason, status",
    ),
    Aggregate(
        PERMISSION_CHANGE_COUNTS,
        PERMISSION_CHANGE_RECORDS,
        f"SELECT {_FIVE_MINUTES.format(ts='ts_us')} AS time, kind, source, "
        "uniqExactState(change_id) AS changes FROM {source} GROUP BY time, kind, source",
    ),
)


RETAINED_TABLES = (
    ACCESS_EVENTS,
    ACCESS_EVENT_SUBJECTS,
    REFUSAL_SUMMARIES,
    AUTH_EVENTS,
)  # changes are kept


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    tables: tuple[Table, ...] = ()  # created if absent
    add_columns: tuple[Table, ...] = ()  # the columns a table of an older version lacks are added
    # (table, new name): renamed if it exists and is not yet renamed (a table replaced by a view)
    retire: tuple[tuple[Table, str], ...] = ()
    after: tuple[str, ...] = ()  # statements run last; `{db}` is the database
    # dashboards tables made in `<db>_dashboards`, filled from the trail (decision 026)
    aggregates: tuple[Aggregate, ...] = ()


MIGRATIONS = (
    Migration(
        1,
        "audit trail: access_events, access_event_subjects, permission_changes, retention_actions",
        (ACCESS_EVENTS, ACCESS_EVENT_SUBJECTS, PERMISSION_CHANGES_V1, RETENTION_ACTIONS),
    ),
    Migration(
        2,
        "hash chain and signed checkpoints; every replica's permission change records, counted "
        "once by the permission_changes view; refusal summaries",
        tables=(
            PERMISSION_CHANGE_RECORDS,
            REFUSAL_SUMMARIES,
            CHAIN_CHECKPOINTS,
            AUTH_EVENTS,
            SUBJECT_BLOCKS,
        ),
        add_columns=(ACCESS_EVENTS,),
        retire=((PERMISSION_CHANGES_V1, "permission_changes_v1"),),
        after=(
            # The first releases' changes, kept (they carry no chain: seq 0, version 1).
            "INSERT INTO {db}.permission_change_records (change_id, ts, ts_us, instance, seq, "
            "actor, kind, role, user, rule_before, rule_after, policy_version_before, "
            "policy_version_after, reason, source, batch_id, record_v, hash) "
            "SELECT change_id, ts, ts_us, instance, 0, actor, kind, role, user, rule_before, "
            "rule_after, policy_version_before, policy_version_after, reason, source, batch_id, "
            "1, '' FROM {db}.permission_changes_v1 FINAL",
            PERMISSION_CHANGES_VIEW,
        ),
    ),
    Migration(
        3,
        "anomalies: detections of bulk access, off-hours access, probing, special-category "
        "reads, exports and break-glass use (9.1.6, 9.1.9, 10.2)",
        tables=(ANOMALIES,),
    ),
    Migration(
        4,
        "record version 3: the purpose each access was decided for (4.2, 9.2.6); the label the "
        "DPO gives a subject block",
        add_columns=(ACCESS_EVENTS, SUBJECT_BLOCKS),
    ),
    Migration(
        5,
        "anomaly reviews (9.1.6, 9.1.9); aggregates for dashboards in <database>_dashboards, "
        "so that dashboards need no access to the trail itself (9.2.6)",
        tables=(ANOMALY_REVIEWS,),
        aggregates=AGGREGATES,
    ),
    Migration(
        6,
        "the register of data subjects' requests and their deadlines (6.3, 6.5, 6.6, 7.3)",
        tables=(SUBJECT_REQUESTS,),
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
    migration: Migration,
    database: str,
    *,
    modern: bool,
    cluster: str | None = None,
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """The unconditional part of a migration: its tables (IF NOT EXISTS) and final statements.
    Column additions and renames depend on what exists; `store.migrate` plans those. Tables in
    ``skip`` are left out (a table a later migration already renamed away)."""
    stmts: list[str] = []
    for t in migration.tables:
        if t.name in skip:
            continue
        stmts += create_table(t, database, modern=modern, cluster=cluster)
    return stmts


def after_ddl(migration: Migration, database: str, *, cluster: str | None = None) -> list[str]:
    stmts = [sql.format(db=database) for sql in migration.after]
    if cluster:  # views are per node, over the Distributed tables
        stmts = [
            s.replace(" AS\nSELECT", f" ON CLUSTER {cluster} AS\nSELECT", 1)
            if s.startswith("CREATE VIEW")
            else s
            for s in stmts
        ]
    return stmts


def add_column_ddl(
    table: Table,
    column: str,
    database: str,
    *,
    modern: bool,
    cluster: str | None = None,
) -> list[str]:
    kind = column_type(dict(table.columns)[column], modern)
    names = table.column_names
    after = names[names.index(column) - 1]
    if cluster is None:
        return [f"ALTER TABLE {database}.{table.name} ADD COLUMN `{column}` {kind} AFTER `{after}`"]
    # On a cluster only the replicated local table is altered here: ClickHouse 18.16 refuses
    # `ALTER … ON CLUSTER` of a Distributed table when the shards replicate internally ("isn't
    # replicated, but shard #1 is replicated"). The Distributed table is made again over the
    # altered local table afterwards (`distributed_ddl`).
    add = f"ON CLUSTER {cluster} ADD COLUMN `{column}` {kind} AFTER `{after}`"
    return [f"ALTER TABLE {database}.{table.name}_local {add}"]


def distributed_ddl(table: Table, database: str, *, modern: bool, cluster: str) -> list[str]:
    """Make ``table``'s Distributed table again on every node, with the local table's current
    columns. It holds no data of its own: the gateway inserts with `insert_distributed_sync=1`,
    so nothing waits in its queue; an insert during the swap fails and is retried."""
    return [
        f"DROP TABLE IF EXISTS {database}.{table.name} ON CLUSTER {cluster}",
        create_table(table, database, modern=modern, cluster=cluster)[1],
    ]


def retire_ddl(
    table: Table, new_name: str, database: str, *, modern: bool, cluster: str | None = None
) -> list[str]:
    """Rename a table out of the way. On a cluster the Distributed table names its local table,
    so it is dropped and made again over the renamed local table."""
    if cluster is None:
        return [f"RENAME TABLE {database}.{table.name} TO {database}.{new_name}"]
    on = f"ON CLUSTER {cluster}"
    renamed = Table(
        new_name, table.columns, table.order_by, table.partition_by, table.shard_key, table.engine
    )
    return [
        f"DROP TABLE IF EXISTS {database}.{table.name} {on}",
        f"RENAME TABLE {database}.{table.name}_local TO {database}.{new_name}_local {on}",
        create_table(renamed, database, modern=modern, cluster=cluster)[1],
    ]


def dashboards_database(database: str) -> str:
    return database + DASHBOARDS_SUFFIX


def aggregate_view_name(agg: Aggregate) -> str:
    return f"{agg.table.name}_mv"


def aggregate_tables_ddl(
    agg: Aggregate, database: str, *, modern: bool, cluster: str | None = None
) -> list[str]:
    """The dashboards database (once per call, IF NOT EXISTS) and the aggregate's table."""
    dash = dashboards_database(database)
    on = f" ON CLUSTER {cluster}" if cluster else ""
    return [
        f"CREATE DATABASE IF NOT EXISTS {dash}{on}",
        *create_table(agg.table, dash, modern=modern, cluster=cluster),
    ]


def aggregate_fill_sql(agg: Aggregate, database: str) -> str:
    """The aggregate of the rows the trail holds already (run once, before its view exists)."""
    dash = dashboards_database(database)
    cols = ", ".join(f"`{n}`" for n in agg.table.column_names)
    select = agg.select.format(source=f"{database}.{agg.source.name}")
    return f"INSERT INTO {dash}.{agg.table.name} ({cols}) {select}"


def aggregate_view_ddl(agg: Aggregate, database: str, *, cluster: str | None = None) -> str:
    """The materialized view that aggregates each insert into the trail table. On a cluster it
    is on every node, from the replicated local table into the local aggregate table (the
    replica that takes an insert aggregates it; replication copies the aggregate)."""
    dash = dashboards_database(database)
    local = "_local" if cluster else ""
    on = f" ON CLUSTER {cluster}" if cluster else ""
    select = agg.select.format(source=f"{database}.{agg.source.name}{local}")
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {dash}.{aggregate_view_name(agg)}{on} "
        f"TO {dash}.{agg.table.name}{local} AS {select}"
    )


def bootstrap_ddl(database: str, *, modern: bool, cluster: str | None = None) -> list[str]:
    """The database and the migrations table: what must exist before migrations are read."""
    on = f" ON CLUSTER {cluster}" if cluster else ""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}{on}",
        *create_table(MIGRATIONS_TABLE, database, modern=modern, cluster=cluster),
    ]


def schema_ddl(database: str, *, modern: bool, cluster: str | None = None) -> list[str]:
    """Every statement `clickhouse init` runs on an empty database, in order."""
    stmts = bootstrap_ddl(database, modern=modern, cluster=cluster)
    for m in MIGRATIONS:
        stmts += migration_ddl(m, database, modern=modern, cluster=cluster)
        for table, new_name in m.retire:
            stmts += retire_ddl(table, new_name, database, modern=modern, cluster=cluster)
        stmts += after_ddl(m, database, cluster=cluster)
        for agg in m.aggregates:
            stmts += aggregate_tables_ddl(agg, database, modern=modern, cluster=cluster)
            stmts.append(aggregate_view_ddl(agg, database, cluster=cluster))
    return stmts
