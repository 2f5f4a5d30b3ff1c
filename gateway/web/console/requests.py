"""The register of data subjects' requests in the console (6.3, 6.5, 6.6, 7.3; decision 029): the
list with each deadline and where it stands, a request's page, opening and closing — made by the
admin API's own code (``gateway.web.requests_api``), so both leave the same records.

  GET  requests                  the register (``overdue=1``: only those past their deadline)
  POST requests                  ``type``, ``subject``, ``received``, ``ref``, ``label``: open one
  GET  requests/{request}        one request: its steps, its deadline; the form to close it
  POST requests/{request}/close  ``outcome``, ``reason``, ``unblock``, the act's four fields

The subject's id travels only in the opening form's body and is hashed at once (5.3); pages show
the DPO's label and the stored form. Listing is a read of the trail's own data (9.2.6); opening
or closing is ``create``, or ``block`` when the step blocks or unblocks the subject (6.5) or
closes a request that blocked (its outcome, a destruction's act, is the DPO's).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway.governance.deadlines import BLOCKING, OUTCOMES, TYPES
from gateway.web.blocks_api import ChangeRefused
from gateway.web.console.kit import ConsoleDeps, caller_of, problem_page, ui_of
from gateway.web.requests_api import (
    ACT_KEYS,
    close_request,
    closing_is_a_block,
    open_request,
    plan_close,
    plan_open,
    request_json,
)

_ID = re.compile(r"^[0-9a-f]{8}\Z")


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    base = deps.cfg.path

    def _deps() -> Any:
        if deps.register is None:
            raise web.HTTPNotFound()
        return deps.register

    async def listing(request: web.Request) -> web.Response:
        caller, ui = caller_of(request), ui_of(request)
        rdeps = _deps()
        overdue = request.query.get("overdue") == "1"
        ask = deps.ask("requests")
        async with deps.trail.viewing(
            request, caller, ask, filters="overdue" if overdue else "all"
        ) as view:
            reg = rdeps.register
            rows = [request_json(reg, r) for r in reg.requests()]
            if overdue:
                rows = [r for r in rows if r["standing"] == "overdue"]
            view.rows = len(rows)
            return deps.renderer.page(
                request,
                ui,
                "requests.html",
                rows=rows,
                counts=reg.counts(),
                today=reg.today().isoformat(),
                overdue=overdue,
                types=TYPES,
                may_create=deps.trail.allowed(caller, "create"),
                may_block=deps.trail.allowed(caller, "block"),
            )

    async def requests(request: web.Request) -> web.StreamResponse:
        return await listing(request)

    async def open_(request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        rdeps = _deps()
        form = await request.post()
        body = {k: str(form.get(k, "")) for k in ("type", "subject", "received", "ref", "label")}
        blocking = body["type"] in BLOCKING
        ask = deps.ask("requests-open", "block" if blocking else "create")
        raw = body["subject"]
        forms = deps.hasher.candidates(raw) if raw and len(raw) <= 256 else []
        event, t0 = await deps.trail.decide(
            request,
            caller,
            ask,
            filters=f"open&type={body['type'] if body['type'] in TYPES else '-'}",
            subjects=forms[:1],
            refusal="your job function may not open this kind of request",
        )
        try:
            opening = plan_open(body, deps.hasher, rdeps.register)
        except ValueError as e:
            await deps.trail.deny(event, 400, "bad_request", t0)  # one record, as the API's 400
            return problem_page(deps, request, 400, "The request could not be used", str(e))
        r, _ = await open_request(opening, event, rdeps, t0)
        if deps.after_block is not None and blocking:
            await deps.after_block()  # in force in every worker before the answer (016)
        raise web.HTTPSeeOther(f"{base}requests/{r.request}?done=opened")

    async def one(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        rdeps = _deps()
        number = request.match_info["request"]
        ask = deps.ask("request")
        if not _ID.match(number):
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", "not a request id")
        found = rdeps.register.get(number)
        async with deps.trail.viewing(
            request,
            caller,
            ask,
            filters=f"request={number}",
            subjects=[found.subject] if found else [],
        ) as view:
            if found is None:
                view.status = 404
                return problem_page(deps, request, 404, "Not found", "no such request")
            view.rows = 1
            return deps.renderer.page(
                request,
                ui,
                "request.html",
                r=request_json(rdeps.register, found),
                outcomes=OUTCOMES[found.request_type],
                act_keys=ACT_KEYS,
                blocked=deps.blocks.current([found.subject]) is not None,
                may_create=deps.trail.allowed(caller, "create"),
                may_block=deps.trail.allowed(caller, "block"),
                done=request.query.get("done", ""),
                error=None,
            )

    async def close(request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        rdeps = _deps()
        number = request.match_info["request"]
        form = await request.post()
        unblock = form.get("unblock") == "yes"
        valid = _ID.match(number) is not None
        found = rdeps.register.get(number) if valid else None
        ask = deps.ask("request-close", "block" if closing_is_a_block(found, unblock) else "create")
        if not valid:
            await deps.trail.refused(request, caller, ask, 400, "bad_filter", "not a request id")
        act = {k: str(form.get(f"act_{k}", "")).strip() for k in ACT_KEYS}
        body: dict[str, Any] = {
            "outcome": str(form.get("outcome", "")),
            "reason": str(form.get("reason", "")),
            "unblock": unblock,
            "act": act if any(act.values()) else None,
        }
        event, t0 = await deps.trail.decide(
            request,
            caller,
            ask,
            filters=f"close&outcome={body['outcome'] if body['outcome'].isidentifier() else '-'}",
            subjects=[found.subject] if found else [],
            refusal="your job function may not close this request",
        )
        plan = plan_close(found, body)
        if isinstance(plan, ChangeRefused):
            await deps.trail.deny(event, plan.status, plan.reason, t0)
            return problem_page(
                deps, request, plan.status, "The request could not be used", plan.message
            )
        done = await close_request(plan, event, rdeps, t0)
        if isinstance(done, ChangeRefused):
            await deps.trail.deny(event, done.status, done.reason, t0)
            return problem_page(
                deps, request, done.status, "The request could not be used", done.message
            )
        if deps.after_block is not None and unblock:
            await deps.after_block()
        raise web.HTTPSeeOther(f"{base}requests/{number}?done=closed")

    router.add_get("/requests", requests, name="console:requests")
    router.add_post("/requests", open_, name="console:requests-open")
    router.add_get("/requests/{request}", one, name="console:request")
    router.add_post("/requests/{request}/close", close, name="console:request-close")
