"""Investigation queries over the audit store (9.2.6, 6.1.1, 6.3): filters → SQL, read in pages.

Contract:
- Filters are values, never SQL: every value is a bound parameter; column names come from this
  module only. The same text runs on chdb and on ClickHouse 18.16 (``ts_us`` is the exact time).
- Results are read in pages of ``PAGE_ROWS`` ordered by (``ts_us``, key), each page a query of its
  own continuing after the last row of the previous one (keyset pagination): a result is never
  whole in memory, and on the embedded store the shipper's inserts interleave between pages.
- Every query has a row limit (``limit``, at most ``MAX_ROWS`` / ``MAX_EXPORT_ROWS``) and a time
  bound: the engine's ``max_execution_time`` on each page (both engines honour it) and a deadline
  over all pages checked between them; ``max_result_rows`` guards each page as well.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import query
from gateway.audit.store.base import AuditStore, Row
from gateway.config.vocabulary import AUDIT_CATEGORY

PAGE_ROWS = 1000
MAX_ROWS = 10_000  # a query answered on screen
MAX_EXPORT_ROWS = 1_000_000  # an export for a regulator (streamed)
TIME_LIMIT_SECONDS = 60.0  # all pages of one query together

EVENT_COLUMNS = (
    "ts_us",
    "event_id",
    "instance",
    "seq",
    "request_id",
    "user",
    "roles",
    "client_ip",
    "auth",
    "method",
    "path",
    "query",
    "route",
    "system",
    "category",
    "purpose",
    "action",
    "subject_ids",
    "decision",
    "reason",
    "rule",
    "policy_version",
    "status",
    "outcome",
    "response_subjects",
    "response_count",
    "response_capped",
    "bytes_out",
    "duration_us",
)
PERMISSION_COLUMNS = (
    "ts_us",
    "change_id",
    "actor",
    "kind",
    "role",
    "user",
    "rule_before",
    "rule_after",
    "reason",
    "source",
)
BLOCK_COLUMNS = ("ts_us", "block_id", "instance", "actor", "action", "subject", "reason", "label")
# One event's whole record: the columns above and what places it in its instance's chain.
RECORD_COLUMNS = (
    *EVENT_COLUMNS,
    "session",
    "bytes_in",
    "upstream_us",
    "record_v",
    "hash",
    "outcome_seq",
    "outcome_hash",
)
ANOMALY_COLUMNS = (
    "anomaly_id",
    "ts_us",
    "detected_us",
    "kind",
    "user",
    "job_function",
    "window_start_us",
    "window_end_us",
    "count",
    "distinct_subjects",
    "threshold",
    "sample_request_ids",
)

# Filter name → the access_events column it compares for equality.
_EQUALS = {
    "user": "user",
    "system": "system",
    "category": "category",
    "action": "action",
    "decision": "decision",
    "reason": "reason",
    "route": "route",
    "request_id": "request_id",
}
FILTERS = (*_EQUALS, "role", "status", "break_glass", "since", "until", "subject")


class QueryRefused(ValueError):
    """A filter value that cannot be used; the message names the filter, never echoes values."""


def spreadsheet_cell(value: Any) -> Any:
    """A text cell of an export that a spreadsheet would run as a formula (`=HYPERLINK(…)`,
    `+`, `-`, `@`, a tab or a carriage return first) is written as text with a leading `'`: a
    recorded path or query is whatever a client sent (CSV injection). Every CSV of the trail
    goes through it (the console's export, `audit export`, `audit search --format csv`)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@dataclass(frozen=True)
class Filters:
    """What an investigator asked for; ``since``/``until`` are µs since the epoch (inclusive,
    exclusive). ``subject`` is the id as stored in the trail: every form it may have (one per
    subject key still configured, docs/decisions/015). ``not_category``: rows of this category
    left out (who accessed a subject's data leaves out who consulted the trail about them)."""

    equals: Mapping[str, str] = field(default_factory=dict)
    role: str | None = None
    status: int | None = None
    break_glass: bool | None = None
    since_us: int | None = None
    until_us: int | None = None
    subject: tuple[str, ...] | None = None
    not_category: str | None = None

    def as_record(self) -> str:
        """The filters as one stable string for the trail (the query's own record, 9.2.6)."""
        parts = [f"{k}={v}" for k, v in sorted(self.equals.items())]
        names = ("role", "status", "break_glass", "since_us", "until_us", "subject", "not_category")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, tuple):
                parts.append(f"{name}={','.join(value)}")
            elif value is not None:
                parts.append(f"{name}={str(value).lower() if name == 'break_glass' else value}")
        return "&".join(parts)


@dataclass
class Page:
    """Where the next page starts, and how much is left."""

    after: tuple[int, str] | None = None
    returned: int = 0
    truncated: bool = False  # the row limit cut the result short
    timed_out: bool = False


def _time_filters(f: Filters, params: dict[str, Any], where: list[str], prefix: str = "") -> None:
    if f.since_us is not None:
        where.append(f"{prefix}ts_us >= %(since)s")
        params["since"] = f.since_us
    if f.until_us is not None:
        where.append(f"{prefix}ts_us < %(until)s")
        params["until"] = f.until_us


def event_where(f: Filters, db: str) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    for name, value in sorted(f.equals.items()):
        where.append(f"{_EQUALS[name]} = %(f_{name})s")
        params[f"f_{name}"] = value
    if f.role is not None:
        where.append("has(roles, %(f_role)s)")
        params["f_role"] = f.role
    if f.status is not None:
        where.append("status = %(f_status)s")
        params["f_status"] = f.status
    if f.break_glass is not None:
        where.append("reason = 'break_glass'" if f.break_glass else "reason != 'break_glass'")
    if f.not_category is not None:
        where.append("category != %(f_not_category)s")
        params["f_not_category"] = f.not_category
    _time_filters(f, params, where)
    if f.subject is not None:
        # The subject index (ordered by subject_id) narrows first; the events table answers.
        forms = [f"subject_id = %(f_subject{i})s" for i in range(len(f.subject))]
        sub_where = [f"({' OR '.join(forms)})"]
        _time_filters(f, params, sub_where)
        where.append(
            f"event_id IN (SELECT event_id FROM {db}.access_event_subjects "
            f"WHERE {' AND '.join(sub_where)})"
        )
        for i, form in enumerate(f.subject):
            params[f"f_subject{i}"] = form
    return where, params


def _paged(
    store: AuditStore,
    select: str,
    where: list[str],
    params: dict[str, Any],
    key: str,
    page: Page,
    limit: int,
    deadline: float,
) -> Iterator[Row]:
    """Yield up to ``limit`` rows, page by page, ordered by (ts_us, ``key``)."""
    while page.returned < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            page.timed_out = True
            return
        size = min(PAGE_ROWS, limit - page.returned)
        clauses = list(where)
        p = dict(params)
        if page.after is not None:
            clauses.append(f"(ts_us > %(a_ts)s OR (ts_us = %(a_ts)s AND {key} > %(a_key)s))")
            p["a_ts"], p["a_key"] = page.after
        sql = (
            f"{select} WHERE {' AND '.join(clauses) or '1'} ORDER BY ts_us, {key} LIMIT {size + 1}"
        )
        settings = {
            "max_execution_time": max(1, int(remaining + 0.999)),
            "max_result_rows": size + 1,
            "result_overflow_mode": "throw",
        }
        rows = store.select(sql, p, settings=settings)
        more = len(rows) > size
        for row in rows[:size]:
            page.returned += 1
            yield row
        if not more:
            return
        last = rows[size - 1]
        page.after = (int(last["ts_us"]), str(last[key]))
    page.truncated = True


def events(
    store: AuditStore,
    f: Filters,
    *,
    limit: int,
    page: Page,
    time_limit: float = TIME_LIMIT_SECONDS,
) -> Iterator[Row]:
    """Access events matching ``f`` (who-accessed when ``f.subject`` is set), oldest first."""
    db = store.database
    where, params = event_where(f, db)
    select = f"SELECT {', '.join(f'`{c}`' for c in EVENT_COLUMNS)} FROM {db}.access_events"
    deadline = time.monotonic() + time_limit
    return _paged(store, select, where, params, "event_id", page, limit, deadline)


def permissions(
    store: AuditStore,
    f: Filters,
    *,
    limit: int,
    page: Page,
    time_limit: float = TIME_LIMIT_SECONDS,
) -> Iterator[Row]:
    """Changes of access rights (9.2.7) from the view that counts each change once."""
    db = store.database
    where: list[str] = []
    params: dict[str, Any] = {}
    if "user" in f.equals:
        where.append("(user = %(f_user)s OR actor = %(f_user)s)")
        params["f_user"] = f.equals["user"]
    _time_filters(f, params, where)
    inner = f"SELECT {', '.join(f'`{c}`' for c in PERMISSION_COLUMNS)} FROM {db}.permission_changes"
    # The view groups at read time: filter and page over its result.
    select = f"SELECT * FROM ({inner})"
    deadline = time.monotonic() + time_limit
    return _paged(store, select, where, params, "change_id", page, limit, deadline)


def _bounded(store: AuditStore, sql: str, params: dict[str, Any], max_rows: int) -> list[Row]:
    """One query of at most ``max_rows`` rows and ``TIME_LIMIT_SECONDS`` (both engines honour
    the settings); a larger answer is an error, never a silent cut."""
    settings = {
        "max_execution_time": int(TIME_LIMIT_SECONDS),
        "max_result_rows": max_rows,
        "result_overflow_mode": "throw",
    }
    return store.select(sql, params, settings=settings)


def event_record(store: AuditStore, event_id: str) -> Row | None:
    """One access event's whole record (``RECORD_COLUMNS``), or None."""
    cols = ", ".join(f"`{c}`" for c in RECORD_COLUMNS)
    rows = _bounded(
        store,
        f"SELECT {cols} FROM {store.database}.access_events WHERE event_id = %(e)s LIMIT 2",
        {"e": event_id},
        2,
    )
    return rows[0] if rows else None


@dataclass(frozen=True)
class AnomalyFilters:
    """Anomaly detections by window start (µs, inclusive/exclusive), kind, job function, user."""

    since_us: int | None = None
    until_us: int | None = None
    kind: str | None = None
    job_function: str | None = None
    user: str | None = None

    def where(self) -> tuple[list[str], dict[str, Any]]:
        where: list[str] = []
        params: dict[str, Any] = {}
        _time_filters(
            Filters(since_us=self.since_us, until_us=self.until_us), params, where, prefix=""
        )
        for name in ("kind", "job_function", "user"):
            value = getattr(self, name)
            if value is not None:
                where.append(f"`{name}` = %(a_{name})s")
                params[f"a_{name}"] = value
        return where, params

    def as_record(self) -> str:
        return "&".join(
            f"{k}={getattr(self, k)}"
            for k in ("kind", "job_function", "user", "since_us", "until_us")
            if getattr(self, k) is not None
        )


def anomalies(
    store: AuditStore,
    f: AnomalyFilters,
    *,
    limit: int,
    page: Page,
    time_limit: float = TIME_LIMIT_SECONDS,
) -> Iterator[Row]:
    """Detections (9.1.6) oldest window first, each once (the table collapses replicas' copies:
    read with FINAL). ``ts_us`` is the window's start."""
    where, params = f.where()
    cols = ", ".join(f"`{c}`" for c in ANOMALY_COLUMNS)
    select = f"SELECT * FROM (SELECT {cols} FROM {store.database}.anomalies FINAL)"
    deadline = time.monotonic() + time_limit
    return _paged(store, select, where, params, "anomaly_id", page, limit, deadline)


MAX_BUCKETS = 20_000  # rows of (bucket, kind, job function): small, but bounded


def anomaly_counts(store: AuditStore, f: AnomalyFilters, bucket_us: int) -> list[Row]:
    """Detections per time bucket, kind and job function (each anomaly once)."""
    where, params = f.where()
    params["bucket"] = bucket_us
    return _bounded(
        store,
        "SELECT intDiv(ts_us, %(bucket)s) * %(bucket)s AS bucket, kind, job_function, "
        f"uniqExact(anomaly_id) AS n FROM {store.database}.anomalies "
        f"WHERE {' AND '.join(where) or '1'} GROUP BY bucket, kind, job_function "
        "ORDER BY bucket, kind, job_function",
        params,
        MAX_BUCKETS,
    )


def anomaly_known(store: AuditStore, anomaly_id: str) -> bool:
    rows = _bounded(
        store,
        f"SELECT count() AS n FROM {store.database}.anomalies WHERE anomaly_id = %(a)s",
        {"a": anomaly_id},
        1,
    )
    return int(rows[0]["n"]) > 0


def anomaly_reviews(store: AuditStore, anomaly_ids: list[str]) -> dict[str, Row]:
    """The latest review of each of ``anomaly_ids`` (at most one page of them) and how many."""
    if not anomaly_ids:
        return {}
    params = {f"i{n}": a for n, a in enumerate(anomaly_ids[:PAGE_ROWS])}
    ids = ", ".join(f"%({k})s" for k in params)
    rows = _bounded(
        store,
        "SELECT anomaly_id, max(ts_us) AS reviewed_us, argMax(state, ts_us) AS state, "
        "argMax(actor, ts_us) AS actor, argMax(comment, ts_us) AS comment, count() AS reviews "
        f"FROM {store.database}.anomaly_reviews WHERE anomaly_id IN ({ids}) GROUP BY anomaly_id",
        params,
        PAGE_ROWS,
    )
    return {str(r["anomaly_id"]): r for r in rows}


def latest_checkpoints(store: AuditStore) -> list[Row]:
    """Per instance, the newest signed checkpoint the store holds (``head_seq``, ``signed_us``)."""
    return _bounded(
        store,
        "SELECT instance, max(seq) AS head_seq, argMax(ts_us, seq) AS signed_us, "
        "argMax(key_id, seq) AS key_id, argMax(head, seq) AS head "
        f"FROM {store.database}.chain_checkpoints GROUP BY instance ORDER BY instance",
        {},
        PAGE_ROWS,
    )


def store_state(store: AuditStore) -> dict[str, Any]:
    """What the store is: engine, server version, schema migrations applied, rows per table."""
    db = store.database
    migrations = _bounded(
        store, f"SELECT version, name FROM {db}.schema_migrations ORDER BY version", {}, 100
    )
    counts = {
        table: int(_bounded(store, f"SELECT count() AS n FROM {db}.{table}", {}, 1)[0]["n"])
        for table in ("access_events", "auth_events", "permission_change_records", "anomalies")
    }
    return {
        "engine": store.engine,
        "version": store.server_version(),
        "database": db,
        "migrations": sorted({int(m["version"]) for m in migrations}),
        "rows": counts,
    }


def blocks(store: AuditStore, subject: str | None = None) -> list[Row]:
    """Every block and unblock (of one subject), oldest first: few rows, read whole."""
    db = store.database
    cols = ", ".join(f"`{c}`" for c in BLOCK_COLUMNS)
    if subject is None:
        return store.select(f"SELECT {cols} FROM {db}.subject_blocks ORDER BY ts_us, block_id")
    return store.select(
        f"SELECT {cols} FROM {db}.subject_blocks WHERE subject = %(s)s ORDER BY ts_us, block_id",
        {"s": subject},
    )


# µs since the epoch have 16 digits from 2001-09-09 on: a shorter number is seconds or ms, which
# read as µs would mean a moment of January 1970 and silently match everything.
MIN_US = 10**15


def parse_time(value: str) -> int:
    """ISO 8601 (naive = UTC) or µs since the epoch → µs since the epoch. ValueError for a
    number that is not plausibly µs (seconds, ms)."""
    if value.isdigit():
        if int(value) < MIN_US:
            raise ValueError("a bare number is µs since the epoch (16 digits)")
        return int(value)
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1_000_000)


def parse_period(params: Any) -> tuple[int | None, int | None]:
    """``since``/``until`` of query-string parameters; ValueError names the parameter."""
    out: list[int | None] = []
    for name in ("since", "until"):
        try:
            out.append(parse_time(params[name]) if name in params else None)
        except ValueError:
            raise ValueError(
                f"{name}: ISO 8601 (UTC unless zoned) or µs since the epoch (16 digits)"
            ) from None
    return out[0], out[1]


def parse_filters(params: Any, subject: list[str] | None) -> tuple[query.Filters, int | None]:
    """Query-string parameters → Filters and the asked limit. ValueError names the parameter."""
    unknown = set(params) - {*query.FILTERS, "limit"}
    if unknown:
        raise ValueError(f"unknown parameter: {sorted(unknown)[0]}")
    equals = {k: str(params[k]) for k in query._EQUALS if k in params}
    status = params.get("status")
    bg = params.get("break_glass")
    if bg is not None and bg not in ("true", "false"):
        raise ValueError("break_glass: true or false")
    since, until = parse_period(params)
    if status is not None and not status.isdigit():
        raise ValueError("status: a number")
    limit = params.get("limit")
    if limit is not None and (not limit.isdigit() or int(limit) < 1):
        raise ValueError("limit: a positive number")
    return (
        query.Filters(
            equals=equals,
            role=params.get("role"),
            status=int(status) if status is not None else None,
            break_glass=None if bg is None else bg == "true",
            since_us=since,
            until_us=until,
            subject=tuple(subject) if subject is not None else None,
            # Who accessed a subject's data: consultations of the trail about them are not
            # accesses (9.2.6); asked for with category=audit_log.
            not_category=AUDIT_CATEGORY
            if subject is not None and "category" not in equals
            else None,
        ),
        int(limit) if limit is not None else None,
    )
