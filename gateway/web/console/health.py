"""Trail health (9.1.8, 9.1.9; decision 012): per instance the newest signed checkpoint (in the
store, and the live one of each running process), shipping lag and the store's state, and
`verify` of a chosen period run on demand in the background with its progress.

  GET  health                      the state; the verification form and recent verifications
  POST health/verify               ``since``/``until``/``tz``: start one → 303 to its page
  GET  health/verify/{job_id}      its progress and result (``part=progress``: that part alone,
                                   polled by the page)
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.audit import query
from gateway.audit.store.base import AuditStore, Row, StoreError
from gateway.web.console.forms import time_range
from gateway.web.console.jobs import VerifyJobs
from gateway.web.console.kit import ConsoleDeps, caller_of, link, now_us, problem_page, ui_of


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    base = deps.cfg.path
    jobs = VerifyJobs(deps.open_store, deps.public_keys)

    async def health(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        async with deps.trail.viewing(request, caller, deps.ask("health")) as view:
            processes = await deps.health()

            def run(store: AuditStore) -> tuple[list[Row], dict[str, Any]]:
                return query.latest_checkpoints(store), query.store_state(store)

            stored: list[Row] = []
            state: dict[str, Any] | None = None
            try:
                stored, state = await deps.read(run)
            except StoreError:
                view.outcome = "store_error"  # the page still shows the processes' own state
            view.rows = len(stored)
            return deps.renderer.page(
                request,
                ui,
                "health.html",
                processes=processes,
                stored=stored,
                store=state,
                blocks_age=deps.blocks.view_age_seconds,
                jobs=jobs.recent(),
                running=jobs.running(),
                error=request.query.get("error", ""),
            )

    async def start(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("verify")
        form = await request.post()
        values = {k: str(form.get(k, "")) for k in ("since", "until", "period")}
        try:
            span = time_range(values, ui, now_us=now_us())
        except ValueError as e:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", str(e))
        record = f"since_us={span.since_us or ''}&until_us={span.until_us or ''}"
        event, t0 = await deps.trail.decide(request, caller, ask, filters=record)
        if jobs.running() is not None:  # one at a time: refused (one record), said on the page
            await deps.trail.deny(event, 409, "busy", t0)
            raise web.HTTPSeeOther(link(base, "health", {"error": "busy"}))
        async with deps.trail.recording(request, event, t0) as view:
            view.status = 303  # answered with the job's page (or, if one began meanwhile, busy)
        # Started once this request's own record is complete: a verification never finds the
        # request that started it in flight (begun, its row not yet shipped).
        job = jobs.start(
            started_by=caller.principal.user, since_us=span.since_us, until_us=span.until_us
        )
        if job is None:  # another began while this one's record was written
            raise web.HTTPSeeOther(link(base, "health", {"error": "busy"}))
        raise web.HTTPSeeOther(link(base, f"health/verify/{job.job_id}"))

    async def status(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        job = jobs.get(request.match_info["job_id"])
        part = request.query.get("part") == "progress"
        ask = deps.ask("verify-status")
        event, t0 = await deps.trail.decide(
            request, caller, ask, filters=f"job={request.match_info['job_id']}"
        )
        if job is None:
            await deps.trail.deny(event, 404, "no_such_job", t0)
            return problem_page(
                deps,
                request,
                404,
                "Not found",
                "no such verification (they are kept while the gateway runs)",
            )
        async with deps.trail.recording(request, event, t0) as view:
            view.rows = job.problem_count
            return deps.renderer.page(
                request, ui, "verify_progress.html" if part else "verify.html", job=job
            )

    router.add_get("/health", health, name="console:health")
    router.add_post("/health/verify", start, name="console:verify")
    router.add_get("/health/verify/{job_id}", status, name="console:verify-status")
