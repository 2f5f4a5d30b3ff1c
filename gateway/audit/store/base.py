"""The audit store interface, the rows it takes, and schema migration over any store.

Two implementations: ``ClickHouseStore`` (a server, through clickhouse-driver) and
``EmbeddedStore`` (chdb, a ClickHouse engine inside the gateway process). Both are used from one
thread at a time (the shipper's, or a CLI command's); neither is touched by the event loop.
Because chdb allows one process per data directory, everything that reads the embedded trail —
investigation queries included — goes through the store of the process that owns it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

from gateway.audit.store import schema
from gateway.audit.store.schema import Table

log = logging.getLogger(__name__)

Row = dict[str, Any]


class StoreError(Exception):
    """The store could not do what was asked (unreachable, timed out, refused). Retryable."""


class AuditStore(Protocol):
    engine: str
    database: str

    @property
    def modern(self) -> bool: ...

    def server_version(self) -> str: ...

    def execute(self, sql: str) -> None: ...

    def insert(self, table: Table, rows: Sequence[Row], batch_id: str) -> None:
        """Insert rows as one block tagged ``batch_id`` (also the query id where supported)."""

    def batch_rows(self, table: Table, batch_id: str) -> int:
        """How many rows of ``batch_id`` the table holds (check-before-retry)."""

    def insert_running(self, batch_id: str) -> bool:
        """Whether an insert of ``batch_id`` is still executing on the server."""

    def select(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Row]:
        """Rows as dicts; ``settings`` are ClickHouse query settings (limits: max_execution_time,
        max_result_rows), sent the way the engine takes them."""

    def close(self) -> None: ...


def columns_of(table: Table, rows: Sequence[Row]) -> list[list[Any]]:
    """The rows' values as one list per column of ``table``, in column order. Transposed by
    ``itemgetter`` and ``zip`` (in C): a comprehension per column cost more than the insert."""
    names = table.column_names
    if len(names) == 1 or not rows:
        return [[row[name] for row in rows] for name in names]
    return [list(column) for column in zip(*map(itemgetter(*names), rows), strict=True)]


def query_id(table: Table, batch_id: str) -> str:
    return f"{batch_id}:{table.name}"


def ts_of(ts_us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts_us / 1_000_000, dt.UTC)


def _default(column_type: str) -> Any:
    if column_type.startswith("Array("):
        return []
    if column_type.startswith(("UInt", "Int")):
        return 0
    return ""


def record_time_us(record: Mapping[str, Any]) -> int:
    """When a record happened: its ``ts_us``, or a refusal summary's window start."""
    return int(record.get("ts_us") or record.get("window_start_us") or 0)


# id(table) → (table, its columns' defaults): looked up per row, so not by the Table's hash
# (a frozen dataclass hashes all its columns each time).
_DEFAULTS: dict[int, tuple[Table, tuple[Any, ...]]] = {}


def _defaults(table: Table) -> tuple[Any, ...]:
    entry = _DEFAULTS.get(id(table))
    if entry is None or entry[0] is not table:
        # An absent array is an empty tuple: one default object is shared by every row.
        values = tuple(
            () if kind.startswith("Array(") else _default(kind) for _, kind in table.columns
        )
        entry = _DEFAULTS[id(table)] = (table, values)
    return entry[1]


def table_row(table: Table, record: Mapping[str, Any], batch_id: str) -> Row:
    """A spool record → a row of ``table``: its values by column name, the absent ones at their
    type's default (a first-release record has no hash), ``ts`` from the record's time."""
    names = table.column_names
    row: Row = dict(zip(names, map(record.get, names, _defaults(table)), strict=True))
    row["ts"] = ts_of(record_time_us(record))
    row["batch_id"] = batch_id
    if "record_v" in row:
        row["record_v"] = record.get("v", 1)
    return row


def event_rows(event: Mapping[str, Any], batch_id: str) -> tuple[Row, list[Row]]:
    """A joined audit event → its access_events row and its access_event_subjects rows."""
    row = table_row(schema.ACCESS_EVENTS, event, batch_id)
    named = list(event.get("subject_ids") or ())
    # Subjects the response named (list and search endpoints) are accesses to them too (6.1.1).
    named += [s for s in event.get("response_subjects") or () if s not in named]
    subjects = [
        {
            "subject_id": sid,
            **{k: row[k] for k in schema.ACCESS_EVENT_SUBJECTS.column_names if k in row},
            "batch_id": batch_id,
        }
        for sid in named
    ]
    return row, subjects


def change_row(record: Mapping[str, Any], batch_id: str) -> Row:
    row = table_row(schema.PERMISSION_CHANGE_RECORDS, record, batch_id)
    row["kind"] = record["change_kind"]
    return row


def migrate(store: AuditStore, *, cluster: str | None = None) -> list[int]:
    """Apply the migrations the store lacks; return the versions applied now. Idempotent: each
    step looks at what exists first, so a migration cut short is completed by the next run."""
    db = store.database
    modern = store.modern
    for sql in schema.bootstrap_ddl(db, modern=modern, cluster=cluster):
        store.execute(sql)
    done = {int(r["version"]) for r in store.select(f"SELECT version FROM {db}.schema_migrations")}
    applied: list[int] = []
    for m in schema.MIGRATIONS:
        if m.version in done:
            continue
        # A migration run again (its record not yet visible on the replica read, or a run cut
        # short) must not make again a table a later migration renamed away: on a cluster its
        # replica path in the keeper still exists, and the CREATE fails.
        engines = _engines(store)
        skip = frozenset(
            t.name for later in schema.MIGRATIONS for t, new in later.retire if new in engines
        )
        for sql in schema.migration_ddl(m, db, modern=modern, cluster=cluster, skip=skip):
            store.execute(sql)
        for table in m.add_columns:
            local = f"{table.name}_local" if cluster else table.name
            have = _columns(store, local)
            missing = [name for name in table.column_names if name not in have]
            for name in missing:
                for sql in schema.add_column_ddl(table, name, db, modern=modern, cluster=cluster):
                    store.execute(sql)
            if cluster and (missing or _columns(store, table.name) != set(table.column_names)):
                for sql in schema.distributed_ddl(table, db, modern=modern, cluster=cluster):
                    store.execute(sql)
        for table, new_name in m.retire:
            engines = _engines(store)
            if engines.get(table.name, "View") != "View" and new_name not in engines:
                for sql in schema.retire_ddl(table, new_name, db, modern=modern, cluster=cluster):
                    store.execute(sql)
        for sql in schema.after_ddl(m, db, cluster=cluster):
            if sql.startswith("INSERT") and _engines(store).get("permission_changes") == "View":
                continue  # already copied: the view is made last
            store.execute(sql)
        for agg in m.aggregates:
            _make_aggregate(store, agg, cluster=cluster)
        row = {
            "version": m.version,
            "name": m.name,
            "applied_at": dt.datetime.now(dt.UTC).replace(microsecond=0),
            "variant": "modern" if modern else "legacy",
        }
        store.insert(schema.MIGRATIONS_TABLE, [row], f"migration-{m.version}")
        log.info("schema migration applied", extra={"version": m.version, "database": db})
        applied.append(m.version)
    return applied


def _make_aggregate(store: AuditStore, agg: schema.Aggregate, *, cluster: str | None) -> None:
    """A dashboards table (decision 026): made, filled from the rows the trail holds, then fed by
    its materialized view. A run cut short is completed by the next: the rows are copied only
    while the view does not exist and the table is empty. Rows another replica ships between
    the copy and the view's creation are not counted (dashboards only; the trail is exact)."""
    dash = schema.dashboards_database(store.database)
    for sql in schema.aggregate_tables_ddl(
        agg, store.database, modern=store.modern, cluster=cluster
    ):
        store.execute(sql)
    if schema.aggregate_view_name(agg) in _engines(store, dash):
        return
    held = store.select(f"SELECT count() AS n FROM {dash}.{agg.table.name}")
    if not int(held[0]["n"]):
        store.execute(schema.aggregate_fill_sql(agg, store.database))
    store.execute(schema.aggregate_view_ddl(agg, store.database, cluster=cluster))


def _columns(store: AuditStore, table: str) -> set[str]:
    rows = store.select(
        "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": store.database, "t": table},
    )
    return {str(r["name"]) for r in rows}


def _engines(store: AuditStore, database: str | None = None) -> dict[str, str]:
    rows = store.select(
        "SELECT name, engine FROM system.tables WHERE database = %(db)s",
        {"db": database or store.database},
    )
    return {str(r["name"]): str(r["engine"]) for r in rows}
