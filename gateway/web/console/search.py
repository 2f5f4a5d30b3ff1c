"""Search (9.2.6): access events by the filters of `audit search`, a page at a time, each row's
whole record, and the export of what a page shows (action ``export``, 10.2).

  GET  search             the form; with ``go`` (or any filter) the page of events it finds
  GET  search/export      the same page as CSV or JSON (``format``), recorded as an export
  GET  events/{event_id}  one event's whole record: the rule, policy version, outcome, chain place
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.audit import query
from gateway.audit.store.base import AuditStore, Row
from gateway.config.vocabulary import AUDIT_CATEGORY, AUDIT_PURPOSE
from gateway.web.console.forms import EVENT_FIELDS, EventForm, cursor, event_filters, next_cursor
from gateway.web.console.kit import ConsoleDeps, caller_of, link, now_us, problem_page, ui_of

EXPORT_COLUMNS = (
    "ts_us",
    "event_id",
    "request_id",
    "user",
    "roles",
    "system",
    "category",
    "purpose",
    "action",
    "decision",
    "reason",
    "status",
    "outcome",
    "route",
    "instance",
    "seq",
)


async def events_page(
    deps: ConsoleDeps, form: EventForm, after: tuple[int, str] | None
) -> tuple[list[Row], str | None, bool]:
    """One page of events from ``after`` (``cfg.page_rows`` at most), the next page's cursor,
    and whether the time bound cut it short."""
    page = query.Page(after=after)

    def run(store: AuditStore) -> list[Row]:
        return list(query.events(store, form.filters, limit=deps.cfg.page_rows, page=page))

    rows = await deps.read(run)
    for row in rows:
        row["purpose"] = purpose_of(deps, row)
    return rows, next_cursor(page), page.timed_out


def purpose_of(deps: ConsoleDeps, row: Row) -> str:
    """The purpose an access served: its route's (3.2); reading the trail is always for
    `audit_control` (9.2.6), whatever page or API did it."""
    if row.get("category") == AUDIT_CATEGORY:
        return AUDIT_PURPOSE
    return deps.purposes_of.get(str(row["route"]), "")


def _params(request: web.Request) -> Mapping[str, str]:
    return {k: v for k, v in request.query.items() if k not in ("lang",)}


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    async def search(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("search")
        params = _params(request)
        try:
            form = event_filters(params, ui, now_us=now_us())
            after = cursor(params)
        except ValueError as e:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", str(e))
        asked = "go" in params or bool(form.values) or form.range.since_us is not None
        async with deps.trail.viewing(
            request, caller, ask, filters=form.filters.as_record() if asked else ""
        ) as view:
            rows: list[Row] = []
            more: str | None = None
            timed_out = False
            if asked:
                rows, more, timed_out = await events_page(deps, form, after)
                view.rows, view.capped = len(rows), more is not None or timed_out
            base_params = {**form.values, "since": params.get("since", ""), "go": "1"}
            base_params |= {"until": params.get("until", ""), "period": params.get("period", "")}
            base_params["tz"] = params.get("tz", "")
            return deps.renderer.page(
                request,
                ui,
                "search.html",
                form=form,
                values=form.values,
                fields=EVENT_FIELDS,
                params=params,
                asked=asked,
                rows=rows,
                next_link=link(deps.cfg.path, "search", {**base_params, "after": more})
                if more
                else None,
                first_link=link(deps.cfg.path, "search", base_params) if after else None,
                export_link=lambda fmt: link(
                    deps.cfg.path,
                    "search/export",
                    {**base_params, "after": params.get("after", ""), "format": fmt},
                ),
                timed_out=timed_out,
            )

    async def export(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("export", "export")
        params = _params(request)
        fmt = params.get("format", "csv")
        try:
            if fmt not in ("csv", "json"):
                raise ValueError("format: csv or json")
            form = event_filters(params, ui, now_us=now_us())
            after = cursor(params)
        except ValueError as e:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", str(e))
        async with deps.trail.viewing(
            request, caller, ask, filters=f"{form.filters.as_record()}&format={fmt}"
        ) as view:
            rows, more, timed_out = await events_page(deps, form, after)
            view.rows, view.capped = len(rows), more is not None or timed_out
            body = _export(rows, fmt)
            name = f"audit-events-{now_us() // 1_000_000}.{fmt}"
            return web.Response(
                body=body,
                content_type="text/csv" if fmt == "csv" else "application/json",
                charset="utf-8",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )

    async def event(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("event")
        event_id = request.match_info["event_id"]
        if not event_id.isalnum() or len(event_id) > 64:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", "not an event id")
        async with deps.trail.viewing(request, caller, ask, filters=f"event_id={event_id}") as v:
            record = await deps.read(lambda store: query.event_record(store, event_id))
            if record is None:
                v.status = 404
                return problem_page(
                    deps,
                    request,
                    404,
                    "Not found",
                    "no such event in the trail (or not shipped yet)",
                )
            v.rows = 1
            record["purpose"] = purpose_of(deps, record)
            return deps.renderer.page(request, ui, "event.html", record=record)

    router.add_get("/search", search, name="console:search")
    router.add_get("/search/export", export, name="console:export")
    router.add_get("/events/{event_id}", event, name="console:event")


def _export(rows: list[Row], fmt: str) -> bytes:
    out: list[dict[str, Any]] = [
        {c: (list(r[c]) if c == "roles" else r.get(c, "")) for c in EXPORT_COLUMNS} for r in rows
    ]
    if fmt == "json":
        return json.dumps(out, ensure_ascii=False, default=str, indent=1).encode()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_COLUMNS)
    for r in out:
        writer.writerow(
            [query.spreadsheet_cell(" ".join(v) if isinstance(v, list) else v) for v in r.values()]
        )
    return buf.getvalue().encode()
