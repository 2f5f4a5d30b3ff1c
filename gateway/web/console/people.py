"""People and their rights: everything one employee did, with their permission changes and
break-glass uses beside it; who may access which category today (9.2.3, 9.3.12) and every change
of access rights with its actor, reason and delta (9.2.7), by period.

  GET  activity      ``user`` and a period: their accesses (pages), permission changes, break-glass
  GET  permissions   the roster of the policy in force and the changes of a period (pages)
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.audit import query
from gateway.audit.store.base import AuditStore, Row
from gateway.web.console.forms import cursor, event_filters, next_cursor, time_range
from gateway.web.console.kit import ConsoleDeps, caller_of, link, now_us, ui_of
from gateway.web.console.search import events_page


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    base = deps.cfg.path

    async def activity(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("activity")
        params = dict(request.query)
        user = params.get("user", "").strip()
        try:
            form = event_filters(
                params, ui, now_us=now_us(), fields=("user",), default_period="30d"
            )
            after = cursor(params)
        except ValueError as e:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", str(e))
        record = form.filters.as_record() if user else ""
        async with deps.trail.viewing(request, caller, ask, filters=record) as view:
            rows: list[Row] = []
            changes: list[Row] = []
            glass: list[Row] = []
            more = None
            timed_out = False
            if user:
                rows, more, timed_out = await events_page(deps, form, after)
                glass_form = replace(form, filters=replace(form.filters, break_glass=True))
                glass, _, _ = await events_page(deps, glass_form, None)
                changes, _ = await _changes(deps, form.filters, None)
                view.rows = len(rows) + len(changes) + len(glass)
                view.capped = more is not None or timed_out
            keep = {
                "user": user,
                **{k: params.get(k, "") for k in ("since", "until", "tz", "period")},
            }
            return deps.renderer.page(
                request,
                ui,
                "activity.html",
                user=user,
                form=form,
                params=params,
                rows=rows,
                changes=changes,
                glass=glass,
                timed_out=timed_out,
                next_link=link(base, "activity", {**keep, "after": more}) if more else None,
                first_link=link(base, "activity", keep) if after else None,
            )

    async def permissions(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("permissions")
        params = dict(request.query)
        user = params.get("user", "").strip()
        try:
            span = time_range(params, ui, now_us=now_us(), default="30d")
            after = cursor(params)
        except ValueError as e:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", str(e))
        filters = query.Filters(
            equals={"user": user} if user else {}, since_us=span.since_us, until_us=span.until_us
        )
        async with deps.trail.viewing(
            request, caller, ask, filters=filters.as_record() or "roster"
        ) as view:
            roster = await asyncio.to_thread(deps.roster)
            changes, more = await _changes(deps, filters, after)
            view.rows, view.capped = len(changes), more is not None
            keep = {"user": user, **{k: params.get(k, "") for k in ("since", "until", "tz")}}
            keep["period"] = params.get("period", "")
            return deps.renderer.page(
                request,
                ui,
                "permissions.html",
                user=user,
                span=span,
                params=params,
                roster=roster,
                changes=changes,
                next_link=link(base, "permissions", {**keep, "after": more}) if more else None,
                first_link=link(base, "permissions", keep) if after else None,
            )

    router.add_get("/activity", activity, name="console:activity")
    router.add_get("/permissions", permissions, name="console:permissions")


async def _changes(
    deps: ConsoleDeps, filters: query.Filters, after: tuple[int, str] | None
) -> tuple[list[Row], str | None]:
    """A page of permission changes (each once, 9.2.7): the user's own or made by them."""
    page = query.Page(after=after)
    only = query.Filters(
        equals={k: v for k, v in filters.equals.items() if k == "user"},
        since_us=filters.since_us,
        until_us=filters.until_us,
    )

    def run(store: AuditStore) -> list[dict[str, Any]]:
        return list(query.permissions(store, only, limit=deps.cfg.page_rows, page=page))

    rows = await deps.read(run)
    return rows, next_cursor(page)
