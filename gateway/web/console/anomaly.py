"""Anomalies (9.1.6, 9.1.9, 10.2): the detectors' findings by kind and job function over time (a
chart, and the same figures as a table), each linked to the accesses behind it, each markable as
reviewed with a comment — a review is a record of the trail (``AnomalyReview``, decision 025).

  GET  anomalies                        a period (default 7 days), kind, job function; pages
  POST anomalies/{anomaly_id}/review    ``comment``: the review, then back to the list
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

from aiohttp import web
from yarl import URL

from gateway.audit import query
from gateway.audit.events import AnomalyReview
from gateway.audit.store.base import AuditStore, Row
from gateway.core.ids import new_id
from gateway.governance.anomalies import KINDS
from gateway.web.console.forms import cursor, next_cursor, time_range
from gateway.web.console.kit import ConsoleDeps, caller_of, link, now_us, problem_page, ui_of
from gateway.web.console.render import UI
from gateway.web.login import safe_return_to

HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US
WEEK_US = 7 * DAY_US
MAX_COMMENT = 2000
_ID = re.compile(r"^[0-9a-f]{8,64}\Z")
_NAME = re.compile(r"^[\w.:-]{1,64}\Z")


def accesses_behind(deps: ConsoleDeps, ui: UI, row: Row) -> str:
    """The search (or, for a permission change, the permissions page) that shows what a
    detection counted: the user's requests in its window, narrowed as its kind was."""
    window = {
        "since": ui.local_input(int(row["window_start_us"])),
        "until": ui.local_input(int(row["window_end_us"])),
        "tz": ui.tz.key,
    }
    if row["kind"] == "permission_change":
        return link(deps.cfg.path, "permissions", window)
    narrow: dict[str, str] = {
        "probing": {"decision": "deny", "reason": "no_matching_rule"},
        "export": {"decision": "allow", "action": "export"},
        "break_glass": {"break_glass": "true"},
    }.get(str(row["kind"]), {"decision": "allow"})
    if row["kind"] == "special_category" and deps.anomalies and deps.anomalies.usual_readers:
        narrow = {**narrow, "category": sorted(deps.anomalies.usual_readers)[0]}
    return link(deps.cfg.path, "search", {"user": row["user"], **narrow, **window, "go": "1"})


def chart(counts: list[Row], since_us: int, until_us: int, bucket_us: int) -> dict[str, Any]:
    """uPlot's data: x (seconds) and one series per kind; kinds with no detection left out."""
    first = since_us // bucket_us * bucket_us
    xs = list(range(first, until_us, bucket_us))
    index = {x: i for i, x in enumerate(xs)}
    series: dict[str, list[int]] = {}
    for r in counts:
        i = index.get(int(r["bucket"]))
        if i is None:
            continue
        series.setdefault(str(r["kind"]), [0] * len(xs))[i] += int(r["n"])
    kinds = [k for k in KINDS if k in series]
    return {"x": [x // 1_000_000 for x in xs], "kinds": kinds, "y": [series[k] for k in kinds]}


def by_function(counts: list[Row]) -> list[dict[str, Any]]:
    """Detections per job function and kind over the period: the chart's figures as a table."""
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for r in counts:
        cell = table[str(r["job_function"])]
        cell[str(r["kind"])] = cell.get(str(r["kind"]), 0) + int(r["n"])
    return [
        {"job_function": f, "kinds": k, "total": sum(k.values())} for f, k in sorted(table.items())
    ]


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    base = deps.cfg.path
    # Reviews recorded here and perhaps not shipped yet: shown until the store has them.
    recent: dict[str, Row] = {}

    async def anomalies(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("anomalies")
        params = dict(request.query)
        now = now_us()
        try:
            span = time_range(params, ui, now_us=now, default="7d")
            after = cursor(params)
            kind = params.get("kind") or None
            function = params.get("job_function") or None
            if kind is not None and kind not in KINDS:
                raise ValueError("kind: one of the detectors' kinds")
            if function is not None and not _NAME.match(function):
                raise ValueError("job_function: a job function's name")
        except ValueError as e:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", str(e))
        since = span.since_us or now - 7 * DAY_US
        until = span.until_us or now
        filters = query.AnomalyFilters(
            since_us=since, until_us=until, kind=kind, job_function=function
        )
        span_us = until - since
        bucket = (
            HOUR_US if span_us <= 2 * DAY_US else DAY_US if span_us <= 400 * DAY_US else WEEK_US
        )
        page = query.Page(after=after)

        def run(store: AuditStore) -> tuple[list[Row], list[Row], dict[str, Row]]:
            found = list(query.anomalies(store, filters, limit=deps.cfg.page_rows, page=page))
            counts = query.anomaly_counts(store, filters, bucket)
            reviews = query.anomaly_reviews(store, [str(r["anomaly_id"]) for r in found])
            return found, counts, reviews

        async with deps.trail.viewing(request, caller, ask, filters=filters.as_record()) as view:
            found, counts, reviews = await deps.read(run)
            for anomaly_id, mine in list(recent.items()):
                stored = reviews.get(anomaly_id)
                if stored is not None and int(stored["reviewed_us"]) >= int(mine["reviewed_us"]):
                    del recent[anomaly_id]  # shipped
                else:
                    reviews[anomaly_id] = mine
            drawn = chart(counts, since, until, bucket)
            more = next_cursor(page)
            view.rows, view.capped = len(found), more is not None or page.timed_out
            keep = {k: params.get(k, "") for k in ("since", "until", "tz", "period", "kind")} | {
                "job_function": params.get("job_function", "")
            }
            return deps.renderer.page(
                request,
                ui,
                "anomalies.html",
                params=params,
                kinds=KINDS,
                since=since,
                until=until,
                rows=found,
                reviews=reviews,
                behind=lambda row: accesses_behind(deps, ui, row),
                chart=drawn,
                kind_labels=[ui._(k) for k in drawn["kinds"]],
                bucket={HOUR_US: "hour", DAY_US: "day"}.get(bucket, "week"),
                functions=by_function(counts),
                may_review=deps.trail.allowed(caller, "create"),
                back=request.path_qs,
                done=params.get("done", ""),
                next_link=link(base, "anomalies", {**keep, "after": more}) if more else None,
                first_link=link(base, "anomalies", keep) if after else None,
            )

    async def review(request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        anomaly_id = request.match_info["anomaly_id"]
        ask = deps.ask("anomaly-review", "create")
        if not _ID.match(anomaly_id):
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", "not an anomaly id")
        form = await request.post()
        comment = str(form.get("comment", "")).strip()
        back = safe_return_to(str(form.get("back", "")), (base + "anomalies",)) or ""
        if not back.startswith(base + "anomalies"):
            back = base + "anomalies"
        kept = URL(back)
        back = str(kept.with_query([(k, v) for k, v in kept.query.items() if k != "done"]))
        event, t0 = await deps.trail.decide(
            request,
            caller,
            ask,
            filters=f"anomaly_id={anomaly_id}",
            refusal="your job function may not review anomalies",
        )
        problem = (
            "comment: say what you found (at least 3 characters)"
            if len(comment) < 3
            else f"comment: at most {MAX_COMMENT} characters"
            if len(comment) > MAX_COMMENT
            else None
        )
        if problem is not None:  # what was sent cannot be used: one refusal record
            await deps.trail.deny(event, 400, "bad_comment", t0)
            return problem_page(deps, request, 400, "The request could not be used", problem)
        async with deps.trail.recording(request, event, t0) as view:
            if not await deps.read(lambda store: query.anomaly_known(store, anomaly_id)):
                view.status = 404  # the store was read to know it: an access that found nothing
                return problem_page(deps, request, 404, "Not found", "no such anomaly")
            record = AnomalyReview(
                review_id=new_id(),
                ts_us=time.time_ns() // 1000,
                anomaly_id=anomaly_id,
                actor=caller.principal.user,
                state="reviewed",
                comment=comment,
                request_id=view.event.request_id,
            )
            await deps.trail.recorder.note(record)  # 9.1.9: the review is a record of the trail
            recent[anomaly_id] = {
                "anomaly_id": anomaly_id,
                "reviewed_us": record.ts_us,
                "state": record.state,
                "actor": record.actor,
                "comment": record.comment,
            }
            view.rows = 1
            sep = "&" if "?" in back else "?"
            raise web.HTTPSeeOther(f"{back}{sep}done=reviewed")

    router.add_get("/anomalies", anomalies, name="console:anomalies")
    router.add_post("/anomalies/{anomaly_id}/review", review, name="console:anomaly-review")
