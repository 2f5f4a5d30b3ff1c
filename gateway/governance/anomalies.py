"""Anomaly detection over the audit store, where the whole truth is (9.1.6, 9.1.9, 10.2).

With several gateway replicas a window counted in one process sees only its share; the store
holds every replica's events. So the detectors are SQL over ClickHouse — the same text on chdb
and on clickhouse-server 18.16 (no modern-only functions) — judging fixed windows aligned to the
epoch, a little after each ends (``delay_seconds``: time for the replicas to ship).

Kinds, per user and window (thresholds per job function, `anomalies.thresholds`):
- ``bulk_access``: distinct data subjects read — path and query subjects and the subjects a
  response named (mass copying, 10.2);
- ``off_hours``: personal-data accesses outside the configured working hours;
- ``probing``: requests refused for lack of a rule (probing, a mis-assigned job function);
- ``special_category``: employee_health (or another configured category) read by a user none
  of whose job functions is among its usual readers;
- ``export``: export actions; ``break_glass``: accesses allowed only by a break-glass session.

Idempotent per window: an anomaly's id is derived from (kind, user, window), the detector skips
ids already recorded, and rows two replicas race to insert collapse (ReplacingMergeTree). Each new
detection counts ``pdgw_anomalies_total{kind, job_function}`` — never a per-user label.

The queries run in a thread (``asyncio.to_thread``), on a store of their own for a server, or on
the shipper's for chdb (one data path per process; the embedded store serialises calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, Row, StoreError, ts_of
from gateway.audit.store.factory import open_store
from gateway.config.model import AnomaliesConfig, StoreConfig, Thresholds
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn

log = logging.getLogger(__name__)

US = 1_000_000
SAMPLES = 5

KINDS = (
    "bulk_access",
    "off_hours",
    "probing",
    "special_category",
    "export",
    "break_glass",
    "permission_change",
)

_WINDOW = "ts_us >= %(start)s AND ts_us < %(end)s AND user != ''"
_GROUP = (
    "SELECT user, groupUniqArrayArray(roles) AS user_roles, count() AS n, {distinct} AS subjects, "
    "arraySlice(groupUniqArray(request_id), 1, {samples}) AS samples "
    "FROM {db}.access_events {join}WHERE {window} AND {where} "
    "GROUP BY user HAVING {having} > %(floor)s ORDER BY user"
)


@dataclass(frozen=True)
class Detection:
    kind: str
    user: str
    job_function: str
    window_start_us: int
    window_end_us: int
    count: int
    distinct_subjects: int
    threshold: int
    sample_request_ids: tuple[str, ...]

    @property
    def anomaly_id(self) -> str:
        key = f"{self.kind}|{self.user}|{self.window_start_us}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]


def _sql_list(values: Iterable[str | int]) -> str:
    return ", ".join(f"'{v}'" if isinstance(v, str) else str(int(v)) for v in values)


def queries(cfg: AnomaliesConfig, db: str) -> dict[str, tuple[str, str]]:
    """kind → (SQL, the threshold field it is judged by). The config's values that appear in
    the text (time zone, days, roles) were validated by gateway.config; the window and the floor are
    query parameters."""
    local = f"toDateTime(intDiv(ts_us, {US}), '{cfg.timezone}')"
    minute = f"(toHour({local}) * 60 + toMinute({local}))"

    def within(days: tuple[int, ...], start: int, end: int) -> str:
        if not days:  # no working days at all (`days: []`); `IN ()` is a syntax error on 18.16
            return "0"
        return (
            f"(toDayOfWeek({local}) IN ({_sql_list(days)}) "
            f"AND {minute} >= {start} AND {minute} < {end})"
        )

    working = within(cfg.work_days, cfg.work_start_minute, cfg.work_end_minute)
    change_window = within(cfg.change_days, cfg.change_start_minute, cfg.change_end_minute)
    special = []
    for category, roles in sorted(cfg.usual_readers.items()):
        usual = f"arrayExists(r -> has([{_sql_list(sorted(roles))}], r), roles)" if roles else "0"
        special.append(f"(category = '{category}' AND NOT {usual})")
    special_where = " OR ".join(special) or "category = 'employee_health'"

    def q(where: str, *, bulk: bool = False, distinct: str = "0", having: str = "n") -> str:
        return _GROUP.format(
            db=db,
            samples=SAMPLES,
            window=_WINDOW,
            join="ARRAY JOIN arrayConcat(subject_ids, response_subjects) AS s " if bulk else "",
            distinct="uniqExact(s)" if bulk else distinct,
            where=where,
            having="subjects" if bulk else having,
        )

    return {
        "bulk_access": (q("decision = 'allow'", bulk=True), "bulk_subjects"),
        "off_hours": (
            q(f"decision = 'allow' AND category != 'none' AND NOT {working}"),
            "off_hours",
        ),
        "probing": (
            q("decision = 'deny' AND reason = 'no_matching_rule'", distinct="uniqExact(path)"),
            "refusals",
        ),
        "special_category": (q(f"decision = 'allow' AND ({special_where})"), "special_category"),
        "export": (q("decision = 'allow' AND action = 'export'"), "exports"),
        "break_glass": (q("decision = 'allow' AND reason = 'break_glass'"), ""),
        # 9.2.7: who changed access rights outside the change windows (the actor; a policy
        # file's change has no actor and is attributed to `policy-file`). Counted once per
        # change however many replicas recorded it; samples are change ids.
        "permission_change": (
            "SELECT if(actor = '', 'policy-file', actor) AS user, "
            "emptyArrayString() AS user_roles, uniqExact(change_id) AS n, 0 AS subjects, "
            f"arraySlice(groupUniqArray(change_id), 1, {SAMPLES}) AS samples "
            f"FROM {db}.permission_change_records "
            f"WHERE ts_us >= %(start)s AND ts_us < %(end)s AND NOT {change_window} "
            "GROUP BY user HAVING n > %(floor)s ORDER BY user",
            "permission_changes",
        ),
    }


def job_function(roles: Iterable[str], cfg: AnomaliesConfig) -> tuple[str, Thresholds]:
    """The job function whose thresholds judge a user: of their roles with thresholds of their
    own, the most permissive one (a user who is also an HR officer is judged as one); else
    ``default``. Its name is the metric's label, so it comes from the config, never the token."""
    best = ("default", cfg.thresholds["default"])
    for role in sorted(set(roles)):
        th = cfg.thresholds.get(role)
        if th is not None and (best[0] == "default" or th.bulk_subjects > best[1].bulk_subjects):
            best = (role, th)
    return best


class Detector:
    """Judges windows of the audit store and records what it finds in ``anomalies``."""

    def __init__(
        self,
        cfg: AnomaliesConfig,
        store: AuditStore,
        instance: str,
        on_detection: Callable[[Detection], None] = lambda d: None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.instance = instance
        self.on_detection = on_detection
        self._queries = queries(cfg, store.database)
        self.judged_through_us = 0  # end of the newest window judged

    def detect(self, start_us: int, end_us: int) -> list[Detection]:
        """Every detection in [start_us, end_us), whether recorded or not."""
        found: list[Detection] = []
        params = {"start": start_us, "end": end_us}
        for kind, (sql, field) in self._queries.items():
            floor = min((getattr(t, field) for t in self.cfg.thresholds.values()) if field else [0])
            for row in self.store.select(sql, {**params, "floor": floor}):
                found += self._judge(kind, field, row, start_us, end_us)
        return found

    def _judge(
        self, kind: str, field: str, row: Row, start_us: int, end_us: int
    ) -> list[Detection]:
        function, th = job_function(row["user_roles"], self.cfg)
        threshold = getattr(th, field) if field else 0
        measured = int(row["subjects"]) if kind == "bulk_access" else int(row["n"])
        if measured <= threshold:
            return []
        return [
            Detection(
                kind=kind,
                user=str(row["user"]),
                job_function=function,
                window_start_us=start_us,
                window_end_us=end_us,
                count=int(row["n"]),
                distinct_subjects=int(row["subjects"]),
                threshold=threshold,
                sample_request_ids=tuple(sorted(str(r) for r in row["samples"])),
            )
        ]

    def judge_window(self, start_us: int) -> list[Detection]:
        """Judge one window and record the detections not yet recorded (by any replica);
        return those this call recorded."""
        end_us = start_us + self.cfg.window_seconds * US
        found = self.detect(start_us, end_us)
        if not found:
            return []
        db = self.store.database
        known = {
            str(r["anomaly_id"])
            for r in self.store.select(
                f"SELECT anomaly_id FROM {db}.anomalies WHERE window_start_us = %(start)s",
                {"start": start_us},
            )
        }
        new = [d for d in found if d.anomaly_id not in known]
        if not new:
            return []
        now_us = time.time_ns() // 1000
        batch_id = f"anomalies-{self.instance}-{start_us}-{now_us}"
        rows = [
            {
                "anomaly_id": d.anomaly_id,
                "ts": ts_of(d.window_start_us),
                "ts_us": d.window_start_us,
                "detected_us": now_us,
                "instance": self.instance,
                "kind": d.kind,
                "user": d.user,
                "job_function": d.job_function,
                "window_start_us": d.window_start_us,
                "window_end_us": d.window_end_us,
                "count": d.count,
                "distinct_subjects": d.distinct_subjects,
                "threshold": d.threshold,
                "sample_request_ids": list(d.sample_request_ids),
                "batch_id": batch_id,
            }
            for d in new
        ]
        self.store.insert(schema.ANOMALIES, rows, batch_id)
        for d in new:
            self.on_detection(d)
        log.warning(
            "anomalies detected",
            extra={"window_start_us": start_us, "kinds": sorted({d.kind for d in new})},
        )
        return new

    def due_windows(self, now_us: int) -> list[int]:
        """Starts of the windows that ended ``delay_seconds`` ago or earlier and are not yet
        judged by this detector (at most ``catch_up_windows``)."""
        width = self.cfg.window_seconds * US
        last_end = (now_us - self.cfg.delay_seconds * US) // width * width
        first = max(self.judged_through_us, last_end - self.cfg.catch_up_windows * width)
        return list(range(first, last_end, width))

    def run_once(self, now_us: int | None = None) -> list[Detection]:
        """Judge every due window; stop at the first store error (retried at the next run)."""
        out: list[Detection] = []
        for start in self.due_windows(time.time_ns() // 1000 if now_us is None else now_us):
            out += self.judge_window(start)
            self.judged_through_us = start + self.cfg.window_seconds * US
        return out


async def run(
    detector: Detector, interval: float, on_result: Callable[[bool], None] = lambda ok: None
) -> None:
    """The background task: judge due windows every ``interval`` seconds, off the event loop."""
    while True:
        try:
            await asyncio.to_thread(detector.run_once)
            on_result(True)
        except StoreError as e:
            on_result(False)
            log.warning("anomaly detection: audit store unavailable", extra={"error": str(e)})
        except Exception:
            on_result(False)
            log.exception("anomaly detection failed")
        await asyncio.sleep(interval)


def background(
    cfg: AnomaliesConfig, store_cfg: StoreConfig, instance: str, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for the proxy app: the detectors' task, on a store connection of their
    own (chdb: a second session on the same path, which the process's one engine serves)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        for kind in KINDS:  # every series from the start, so increase() sees the first one
            for function in cfg.thresholds:
                metrics.anomalies.labels(kind, function)
        store = await asyncio.to_thread(open_store, store_cfg, apply_schema=False)

        def detected(d: Detection) -> None:
            metrics.anomalies.labels(d.kind, d.job_function).inc()

        detector = Detector(cfg, store, instance, detected)
        metrics.anomaly_judged.set_function(lambda: detector.judged_through_us / US)
        task = spawn(
            run(
                detector,
                cfg.interval_seconds,
                on_result=lambda ok: metrics.anomaly_runs.labels("ok" if ok else "error").inc(),
            ),
            name="anomaly-detection",
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(close_quietly, store)

    return ctx


def close_quietly(store: AuditStore) -> None:
    with contextlib.suppress(Exception):
        store.close()


__all__ = ["KINDS", "Detection", "Detector", "background", "job_function", "queries", "run"]


def describe(d: Detection) -> dict[str, Any]:
    """A detection as the log and the tests see it."""
    return {
        "kind": d.kind,
        "user": d.user,
        "job_function": d.job_function,
        "count": d.count,
        "distinct_subjects": d.distinct_subjects,
    }
