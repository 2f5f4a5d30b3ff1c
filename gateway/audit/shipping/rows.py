"""Spool records → store rows: an access and its outcome joined into one row in the order their
rows complete (decision 005), and a batch's rows per table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.events import PENDING, UNKNOWN, merge_outcome
from gateway.audit.shipping.state import Position
from gateway.audit.store import schema
from gateway.audit.store.base import (
    change_row,
    event_rows,
    table_row,
)

log = logging.getLogger(__name__)


@dataclass
class ShipRow:
    completed_at: Position
    access_at: Position
    event: dict[str, Any]


@dataclass
class Assembler:
    """Joins access and outcome records into rows, in completion order."""

    pending: dict[str, tuple[Position, dict[str, Any]]] = field(default_factory=dict)
    orphans: int = 0

    def feed(self, pos: Position, rec: dict[str, Any]) -> list[ShipRow]:
        kind = rec.get("kind")
        if kind == "access":
            if rec.get("outcome") == PENDING:
                self.pending[rec["event_id"]] = (pos, rec)
                return []
            return [ShipRow(pos, pos, rec)]
        if kind == "outcome":
            found = self.pending.pop(rec.get("event_id", ""), None)
            if found is None:
                self.orphans += 1
                log.error("outcome record without its access", extra={"position": list(pos)})
                return []
            apos, access = found
            joined = dict(access)
            merge_outcome(joined, rec)
            return [ShipRow(pos, apos, joined)]
        if kind == "start":
            return self.finalize(pos)
        if kind in ROW_KINDS:
            return [ShipRow(pos, pos, rec)]
        return []

    def finalize(self, pos: Position) -> list[ShipRow]:
        """The run that wrote the pending accesses is over: their outcome is unknown."""
        rows = [
            ShipRow(pos, apos, {**acc, "outcome": UNKNOWN}) for apos, acc in self.pending.values()
        ]
        self.pending.clear()
        return rows


# Record kind → the table its rows go to (access records go to access_events and, per subject,
# access_event_subjects; see batch_tables).
KIND_TABLES = {
    "permission_change": schema.PERMISSION_CHANGE_RECORDS,
    "refusal_summary": schema.REFUSAL_SUMMARIES,
    "checkpoint": schema.CHAIN_CHECKPOINTS,
    "auth_event": schema.AUTH_EVENTS,
    "subject_block": schema.SUBJECT_BLOCKS,
    "anomaly_review": schema.ANOMALY_REVIEWS,
    "subject_request": schema.SUBJECT_REQUESTS,
}


ROW_KINDS = frozenset({"access", *KIND_TABLES})


def batch_tables(rows: list[ShipRow], batch_id: str) -> dict[schema.Table, list[dict[str, Any]]]:
    """The rows of one batch, per table, in the order they are inserted (and checked)."""
    tables: dict[schema.Table, list[dict[str, Any]]] = {
        schema.ACCESS_EVENTS: [],
        schema.ACCESS_EVENT_SUBJECTS: [],
        **{t: [] for t in KIND_TABLES.values()},
    }
    # Bound once: hashing a Table (a frozen dataclass with its columns) per row cost more than
    # building the row.
    events, subjects = tables[schema.ACCESS_EVENTS], tables[schema.ACCESS_EVENT_SUBJECTS]
    for r in rows:
        kind = r.event.get("kind")
        if kind == "permission_change":
            tables[schema.PERMISSION_CHANGE_RECORDS].append(change_row(r.event, batch_id))
        elif kind in KIND_TABLES:
            table = KIND_TABLES[kind]
            tables[table].append(table_row(table, r.event, batch_id))
        else:
            row, named = event_rows(r.event, batch_id)
            events.append(row)
            subjects.extend(named)
    return tables


def cut_batch(batch: list[ShipRow], max_rows: int) -> list[ShipRow]:
    """The first ``max_rows`` rows, extended so rows completed by one record stay together."""
    n = min(len(batch), max_rows)
    while n < len(batch) and batch[n].completed_at == batch[n - 1].completed_at:
        n += 1
    return batch[:n]
