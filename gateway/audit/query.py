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
