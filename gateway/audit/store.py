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
from typing import Any, Protocol

from gateway.audit import schema
from gateway.audit.schema import Table

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

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...

    def close(self) -> None: ...


def query_id(table: Table, batch_id: str) -> str:
    return f"{batch_id}:{table.name}"


def ts_of(ts_us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts_us / 1_000_000, dt.UTC)


def event_rows(event: Mapping[str, Any], batch_id: str) -> tuple[Row, list[Row]]:
    """A joined audit event → its access_events row and its access_event_subjects rows."""
    row: Row = {name: event.get(name) for name in schema.ACCESS_EVENTS.column_names}
    row["ts"] = ts_of(event["ts_us"])
    row["batch_id"] = batch_id
    subjects = [
        {
            "subject_id": sid,
            **{k: row[k] for k in schema.ACCESS_EVENT_SUBJECTS.column_names if k in row},
            "batch_id": batch_id,
        }
        for sid in event.get("subject_ids") or ()
    ]
    return row, subjects


def migrate(store: AuditStore, *, cluster: str | None = None) -> list[int]:
    """Apply the migrations the store lacks; return the versions applied now. Idempotent."""
    db = store.database
    modern = store.modern
    for sql in schema.bootstrap_ddl(db, modern=modern, cluster=cluster):
        store.execute(sql)
    done = {int(r["version"]) for r in store.select(f"SELECT version FROM {db}.schema_migrations")}
    applied: list[int] = []
    for m in schema.MIGRATIONS:
        if m.version in done:
            continue
        for sql in schema.migration_ddl(m, db, modern=modern, cluster=cluster):
            store.execute(sql)
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
