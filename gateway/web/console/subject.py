"""A person's data (6.1.1, 6.3, 6.5, 6.6): who accessed it, when, for which purpose, allowed or
refused, and apart from that who consulted the trail about them (9.2.6); block or unblock it with
a reason, a label and a confirmation; the printable subject report.

  GET  subject                      the form: the subject's id is typed here
  POST subject                      ``subject=ID`` → 303 to the subject's page (an opaque token)
  GET  subject/{token}              accesses to the subject (filters, pages), consultations of
                                    the trail about them, whether blocked
  GET  subject/{token}/block        the confirmation form of a block or unblock (``action``)
  POST subject/{token}/block        ``action``, ``reason``, ``label``, ``confirm=yes``: the change
  GET  subject/{token}/report       the subject report for a period, for printing

5.3: the id is hashed here (the gateway's SubjectHasher) before it is looked up, recorded or
blocked; links carry a token (``forms.SubjectTokens``), never the id. Every request here is a
consultation of the trail about the person (decision 020), recorded with the subject as stored.

What the CLI and the admin API do, this does with their code: the report is
``gateway.audit.report`` (consultations counted and listed apart, a period that never passes the
moment it was asked for); a block or unblock is ``blocks_api.plan_change`` (400, 409) and
``blocks_api.make_change`` (the access of action ``block``, the ``subject_block`` record and its
permission change), so the trail holds the same records whichever way the DPO took.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.audit import report
from gateway.audit.store.base import AuditStore, Row
from gateway.config.vocabulary import AUDIT_CATEGORY
from gateway.web.blocks_api import ChangeRefused, make_change, plan_change
from gateway.web.console.forms import EventForm, cursor, event_filters, subject_id, time_range
from gateway.web.console.kit import ConsoleDeps, caller_of, link, now_us, ui_of
from gateway.web.console.search import events_page
from gateway.web.trail import Caller

SUBJECT_FIELDS = ("category", "decision", "system", "user")
PERIOD_PARAMS = ("since", "until", "period", "tz")


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
        given = form.get("subject")
        try:
            raw = subject_id(given if isinstance(given, str) else "")
        except ValueError as e:
            event, t0 = await deps.trail.decide(request, caller, ask)
            await deps.trail.deny(event, 400, "bad_subject", t0)
            return deps.renderer.page(request, ui, "subject_form.html", status=400, error=str(e))
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
            # The audit API's parser: consultations are left out unless category=audit_log.
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
            consulting = form.values.get("category") == AUDIT_CATEGORY
            consulted: list[Row] = []
            more_consulted = False
            if not consulting:  # 9.2.6: who read the trail about the person, in the same period
                consulted, next_consulted, _ = await events_page(deps, _consultations(form), None)
                more_consulted = next_consulted is not None
            view.rows = len(rows) + len(consulted)
            view.capped = more is not None or timed_out or more_consulted
            token = request.match_info["token"]
            period = {k: params.get(k, "") for k in PERIOD_PARAMS}
            keep = {**form.values, **period}
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
                consulting=consulting,
                consulted=consulted,
                looked_up=report.LOOKED_UP,
                all_consultations=link(
                    base, f"subject/{token}", {**period, "category": AUDIT_CATEGORY}
                )
                if more_consulted
                else None,
                block=_block_state(deps, forms),
                may_block=deps.trail.allowed(caller, "block"),
                done=params.get("done", ""),
                timed_out=timed_out,
                report_link=link(base, f"subject/{token}/report", period),
                next_link=link(base, f"subject/{token}", {**keep, "after": more}) if more else None,
                first_link=link(base, f"subject/{token}", keep) if after else None,
            )

    async def block_form(request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        raw = await opened(request, caller, "subject-block-form", "read")
        action = request.query.get("action", "block")
        forms = deps.hasher.candidates(raw)
        async with deps.trail.viewing(
            request, caller, deps.ask("subject-block-form"), subjects=forms[:1]
        ):
            return _block_page(
                deps,
                request,
                raw,
                forms,
                action,
                may_block=deps.trail.allowed(caller, "block"),
            )

    async def block(request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        raw = await opened(request, caller, "subject-block", "block")
        form = await request.post()
        action, reason = str(form.get("action", "")), str(form.get("reason", ""))
        label = str(form.get("label", ""))
        forms = deps.hasher.candidates(raw)
        event, t0 = await deps.trail.decide(
            request,
            caller,
            deps.ask("subject-block", "block"),
            filters=f"action={action}" if action in ("block", "unblock") else "action=-",
            subjects=forms[:1],
            refusal="your job function may not block or unblock a data subject",
        )
        plan = plan_change(deps.blocks, forms, raw, action, reason, label)
        if not isinstance(plan, ChangeRefused) and form.get("confirm") != "yes":
            plan = ChangeRefused(
                400, "bad_request", "confirm: tick the box to confirm", "not_confirmed"
            )
        if isinstance(plan, ChangeRefused):  # 400 or 409: one refusal record, the form again
            await deps.trail.deny(event, plan.status, plan.reason, t0)
            return _block_page(
                deps,
                request,
                raw,
                forms,
                action,
                may_block=True,
                status=plan.status,
                error=plan.message,
                reason=reason,
                label=label,
            )
        done = await make_change(
            plan,
            event,
            recorder=deps.trail.recorder,
            blocks=deps.blocks,
            rights=deps.rights,
            given=raw,
            t0=t0,
            status=303,
            on_block=deps.on_block,
        )
        if deps.after_block is not None:
            await deps.after_block()
        result = "blocked" if done.record.action == "block" else "unblocked"
        raise web.HTTPSeeOther(
            link(base, f"subject/{request.match_info['token']}", {"done": result})
        )

    async def report_page(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        ask = deps.ask("subject-report")
        raw = await opened(request, caller, "subject-report", "read")
        forms = deps.hasher.candidates(raw)
        try:
            span = time_range(request.query, ui, now_us=now_us())
        except ValueError as e:
            await deps.trail.refused(
                request, caller, ask, 400, "bad_filter", str(e), subjects=forms[:1]
            )
        event, t0 = await deps.trail.decide(
            request, caller, ask, filters="report", subjects=forms[:1]
        )
        # As the audit API's report: never past this moment, so its own record (and any later
        # consultation) is outside it, and the same period gives the same numbers.
        since = span.since_us
        until = event.ts_us if span.until_us is None else min(span.until_us, event.ts_us)
        event.query = f"report&since_us={since or 0}&until_us={until}"
        async with deps.trail.recording(request, event, t0) as view:
            keys = deps.public_keys()

            def run(store: AuditStore) -> dict[str, Any]:
                # The live head is not compared (it is signed every checkpoint interval, so
                # newer records would look forged); the trail-health page does that.
                return report.build(
                    store,
                    tuple(forms),
                    since_us=since,
                    until_us=until,
                    purposes_of=deps.purposes_of,
                    public_keys=keys,
                )

            content = await deps.read(run)
            view.rows = int(content["rows"])
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
                titles=report.TITLES,
                looked_up=report.LOOKED_UP,
            )

    router.add_get("/subject", entry, name="console:subject-form")
    router.add_post("/subject", lookup, name="console:subject-lookup")
    router.add_get("/subject/{token}", page, name="console:subject")
    router.add_get("/subject/{token}/block", block_form, name="console:subject-block-form")
    router.add_post("/subject/{token}/block", block, name="console:subject-block")
    router.add_get("/subject/{token}/report", report_page, name="console:subject-report")


def _consultations(form: EventForm) -> EventForm:
    """The reads of the trail about the subject in the page's period (category ``audit_log``,
    whoever read it), apart from the accesses to their data."""
    only = replace(
        form.filters, equals={"category": AUDIT_CATEGORY}, not_category=None, break_glass=None
    )
    return replace(form, filters=only)


def _block_state(deps: ConsoleDeps, forms: list[str]) -> dict[str, Any] | None:
    """The block in force on the subject, as this process sees it (6.5), or None."""
    current = deps.blocks.current(forms)
    if current is None:
        return None
    return {
        "ts_us": current.ts_us,
        "actor": current.actor,
        "reason": current.reason,
        "label": current.label,
    }


def _block_page(
    deps: ConsoleDeps,
    request: web.Request,
    raw: str,
    forms: list[str],
    action: str,
    *,
    may_block: bool,
    status: int = 200,
    error: str | None = None,
    reason: str = "",
    label: str = "",
) -> web.Response:
    block = _block_state(deps, forms)
    return deps.renderer.page(
        request,
        ui_of(request),
        "subject_block.html",
        status=status,
        subject=raw,
        token=request.match_info["token"],
        action=action if action in ("block", "unblock") else "block",
        block=block,
        may_block=may_block,
        error=error,
        reason=reason,
        label=label or (block["label"] if block else ""),
    )
