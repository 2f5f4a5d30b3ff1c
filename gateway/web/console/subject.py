"""A person's data (6.1.1, 6.3, 6.5, 6.6): who accessed it, when, for which purpose, allowed or
refused; block or unblock it with a reason and a confirmation; the printable subject report.

  GET  subject                      the form: the subject's id is typed here
  POST subject                      ``subject=ID`` → 303 to the subject's page (an opaque token)
  GET  subject/{token}              accesses to the subject (filters, pages), whether blocked
  GET  subject/{token}/block        the confirmation form of a block or unblock (``action``)
  POST subject/{token}/block        ``action``, ``reason``, ``confirm=yes``: the change (6.5)
  GET  subject/{token}/report       the subject report, for printing

5.3: the id is hashed here (the gateway's SubjectHasher) before it is looked up, recorded or
blocked; links carry a token (``forms.SubjectTokens``), never the id.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.audit import report
from gateway.audit.store.base import AuditStore
from gateway.web.blocks_api import change_block, change_problem
from gateway.web.console.forms import cursor, event_filters, subject_id
from gateway.web.console.kit import ConsoleDeps, caller_of, link, now_us, ui_of
from gateway.web.console.search import events_page
from gateway.web.trail import Caller

SUBJECT_FIELDS = ("category", "decision", "system", "user")


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    base = deps.cfg.path

    async def opened(request: web.Request, caller: Caller, name: str, action: str) -> str:
        """The subject of the link's token, or the request refused (recorded)."""
        try:
            return deps.tokens.open(request.match_info["token"])
        except ValueError:
            await deps.trail.refused(
                request,
                caller,
                deps.ask(name, action),
                404,
                "bad_token",
                "this link has expired: enter the subject's id again",
            )

    async def entry(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        async with deps.trail.viewing(request, caller, deps.ask("subject-form")):
            return deps.renderer.page(request, ui, "subject_form.html", error=None)

    async def lookup(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        form = await request.post()
        ask = deps.ask("subject-lookup")
        try:
            given = form.get("subject")
            raw = subject_id(given if isinstance(given, str) else "")
        except ValueError as e:
            async with deps.trail.viewing(request, caller, ask) as view:
                view.status, view.outcome = 400, "bad_request"
                return deps.renderer.page(
                    request, ui, "subject_form.html", status=400, error=str(e)
                )
        async with deps.trail.viewing(request, caller, ask, subjects=[deps.hasher.stored(raw)]):
            token = deps.tokens.issue(raw)
            raise web.HTTPSeeOther(link(base, f"subject/{token}", {"tz": form.get("tz", "")}))

    async def page(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("subject")
        raw = await opened(request, caller, "subject", "read")
        forms = deps.hasher.candidates(raw)
        params = dict(request.query)
        try:
            form = event_filters(params, ui, now_us=now_us(), subject=forms, fields=SUBJECT_FIELDS)
            after = cursor(params)
        except ValueError as e:
            await deps.trail.refused(
                request, caller, ask, 400, "bad_filter", str(e), subjects=forms[:1]
            )
        async with deps.trail.viewing(
            request, caller, ask, filters=form.filters.as_record(), subjects=forms[:1]
        ) as view:
            rows, more, timed_out = await events_page(deps, form, after)
            view.rows, view.capped = len(rows), more is not None or timed_out
            token = request.match_info["token"]
            keep = {**form.values, **{k: params.get(k, "") for k in ("since", "until", "tz")}}
            keep["period"] = params.get("period", "")
            return deps.renderer.page(
                request,
                ui,
                "subject.html",
                subject=raw,
                token=token,
                form=form,
                values=form.values,
                params=params,
                rows=rows,
                block=_block_state(deps, forms),
                may_block=deps.trail.allowed(caller, "block"),
                done=params.get("done", ""),
                timed_out=timed_out,
                next_link=link(base, f"subject/{token}", {**keep, "after": more}) if more else None,
                first_link=link(base, f"subject/{token}", keep) if after else None,
            )

    async def block_form(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        raw = await opened(request, caller, "subject-block-form", "read")
        action = request.query.get("action", "block")
        forms = deps.hasher.candidates(raw)
        async with deps.trail.viewing(
            request, caller, deps.ask("subject-block-form"), subjects=forms[:1]
        ):
            return deps.renderer.page(
                request,
                ui,
                "subject_block.html",
                subject=raw,
                token=request.match_info["token"],
                action=action if action in ("block", "unblock") else "block",
                block=_block_state(deps, forms),
                may_block=deps.trail.allowed(caller, "block"),
                error=None,
                reason="",
            )

    async def block(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        raw = await opened(request, caller, "subject-block", "block")
        form = await request.post()
        action, reason = str(form.get("action", "")), str(form.get("reason", ""))
        stored = deps.hasher.stored(raw)
        token = request.match_info["token"]
        async with deps.trail.viewing(
            request,
            caller,
            deps.ask("subject-block", "block"),
            filters=f"action={action}" if action in ("block", "unblock") else "",
            subjects=[stored],
            refusal="your job function may not block or unblock a data subject",
        ) as view:
            problem = change_problem(stored, action, reason)
            if problem is None and form.get("confirm") != "yes":
                problem = "confirm: tick the box to confirm"
            if problem is not None:
                view.status, view.outcome = 400, "bad_request"
                return deps.renderer.page(
                    request,
                    ui,
                    "subject_block.html",
                    status=400,
                    subject=raw,
                    token=token,
                    action=action if action in ("block", "unblock") else "block",
                    block=_block_state(deps, deps.hasher.candidates(raw)),
                    may_block=True,
                    error=problem,
                    reason=reason,
                )
            rec = await change_block(
                deps.blocks,
                actor=caller.principal.user,
                subject=stored,
                given=raw,
                action=action,
                reason=reason.strip(),
                request_id=view.event.request_id,
                on_block=deps.on_block,
            )
            if deps.after_block is not None:
                await deps.after_block()
            view.rows = 1
            done = "blocked" if rec.action == "block" else "unblocked"
            raise web.HTTPSeeOther(link(base, f"subject/{token}", {"done": done}))

    async def report_page(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        raw = await opened(request, caller, "subject-report", "read")
        forms = deps.hasher.candidates(raw)
        async with deps.trail.viewing(
            request, caller, deps.ask("subject-report"), filters="report", subjects=forms[:1]
        ) as view:
            keys = deps.public_keys()

            def run(store: AuditStore) -> dict[str, Any]:
                # As the audit API's report: the live head is not compared (it is signed every
                # checkpoint interval, so newer records would look forged); see trail health.
                return report.build(
                    store, tuple(forms), purposes_of=deps.purposes_of, public_keys=keys
                )

            content = await deps.read(run)
            view.rows = int(content["accesses"]) + int(content["refused"])
            view.capped = not content["complete"]
            return deps.renderer.page(
                request,
                ui,
                "report.html",
                subject=raw,
                token=request.match_info["token"],
                report=content,
                generated_at=now_us(),
                generated_by=caller.principal.user,
                request_id=view.event.request_id,
                titles=report_titles(),
            )

    router.add_get("/subject", entry, name="console:subject-form")
    router.add_post("/subject", lookup, name="console:subject-lookup")
    router.add_get("/subject/{token}", page, name="console:subject")
    router.add_get("/subject/{token}/block", block_form, name="console:subject-block-form")
    router.add_post("/subject/{token}/block", block, name="console:subject-block")
    router.add_get("/subject/{token}/report", report_page, name="console:subject-report")


def _block_state(deps: ConsoleDeps, forms: list[str]) -> dict[str, Any] | None:
    """The block in force on the subject, as this process sees it (6.5), or None."""
    blocked = deps.blocks.blocked(forms)
    if blocked is None:
        return None
    for rec in deps.blocks.active():
        if rec.subject == blocked:
            return {"ts_us": rec.ts_us, "actor": rec.actor, "reason": rec.reason}
    return None


def report_titles() -> dict[str, str]:
    return {
        "category": "Categories of personal data processed",
        "purpose": "Purposes of processing",
        "job_function": "Job functions that processed the data",
        "action": "Operations",
        "system": "Systems",
    }
