"""Retention by partition (4.7-4.9), and the record of every drop (7.3).

A monthly partition is dropped once all of it is older than the cutoff. Each drop is first
written to ``retention_actions`` (who, when, which table and partition, how many rows, why), then
executed: a crash in between leaves a record of an intended drop, never an unrecorded one.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore


@dataclass(frozen=True)
class Dropped:
    table: str
    partition: str
    rows: int


def partition_end(partition: str) -> dt.date:
    """The last day of a toYYYYMM partition, e.g. '202401' → 2024-01-31."""
    year, month = int(partition[:4]), int(partition[4:6])
    return dt.date(year, month, calendar.monthrange(year, month)[1])


def expired_partitions(store: AuditStore, cutoff: dt.date) -> list[Dropped]:
    names = ", ".join(f"'{t.name}'" for t in schema.RETAINED_TABLES)
    rows = store.select(
        "SELECT table, partition, sum(rows) AS rows FROM system.parts "
        f"WHERE database = %(db)s AND active AND table IN ({names}) "
        "GROUP BY table, partition ORDER BY table, partition",
        {"db": store.database},
    )
    out = []
    for r in rows:
        part = str(r["partition"]).strip("'")
        if part.isdigit() and len(part) == 6 and partition_end(part) < cutoff:
            out.append(Dropped(str(r["table"]), part, int(r["rows"])))
    return out


def apply_retention(
    store: AuditStore, cutoff: dt.date, *, actor: str, reason: str, dry_run: bool = False
) -> list[Dropped]:
    expired = expired_partitions(store, cutoff)
    if dry_run:
        return expired
    for d in expired:
        record = {
            "ts": dt.datetime.now(dt.UTC).replace(microsecond=0),
            "actor": actor,
            "table_name": d.table,
            "partition": d.partition,
            "rows": d.rows,
            "cutoff": cutoff,
            "reason": reason,
        }
        store.insert(schema.RETENTION_ACTIONS, [record], f"retention-{d.table}-{d.partition}")
        store.execute(f"ALTER TABLE {store.database}.{d.table} DROP PARTITION {d.partition}")
    return expired
