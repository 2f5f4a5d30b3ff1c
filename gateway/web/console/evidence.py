"""The evidence pack in the console (9.1.9; decision 028): a period chosen by days, the pack's
figures shown as the CLI's printable page shows them, and the signed pack to download — the same
figures and signature `pd-gateway evidence` writes, from the same code (``gateway.web.
evidence_api``). Making a pack is an ``export`` of the trail (10.2), recorded like every page.

  GET evidence                           the form
  GET evidence?from=DATE&to=DATE         the pack of those days (in the page's zone), shown
  GET evidence/download?from=DATE&to=DATE  ``{"pack", "signature"}`` as a file; `pd-gateway
                                         evidence verify FILE` checks it
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

from aiohttp import web

from gateway.governance.evidence import canonical
from gateway.web.admin import AdminRefused
from gateway.web.boundary import REQUEST_ID
from gateway.web.console.kit import ConsoleDeps, caller_of, ui_of
from gateway.web.console.render import UI
from gateway.web.evidence_api import parse_period

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")


def _period(ui: UI, query: Any) -> tuple[int, int, str, str]:
    """The days asked for, in the page's zone: (from_us, to_us, from, to); ValueError."""
    first, last = str(query.get("from", "")), str(query.get("to", ""))
    try:
        a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    except ValueError:
        raise ValueError("from, to: days, YYYY-MM-DD") from None
    start = dt.datetime.combine(a, dt.time(), tzinfo=ui.tz)
    end = dt.datetime.combine(b + dt.timedelta(days=1), dt.time(), tzinfo=ui.tz)
    s, e = parse_period({"from": start.isoformat(), "to": end.isoformat()}, time.time_ns() // 1000)
    return s, e, first, last


def register(router: web.UrlDispatcher, deps: ConsoleDeps) -> None:
    async def make(request: web.Request, name: str) -> tuple[Any, ...]:
        """The pack of the days asked for, recorded as an export (or a refusal)."""
        caller = caller_of(request)
        maker = deps.evidence
        if maker is None:
            raise web.HTTPNotFound()
        first, last = (str(request.query.get(k, "")) for k in ("from", "to"))
        shown = "&".join(f"{k}={v}" for k, v in (("from", first), ("to", last)) if _DAY.match(v))
        event, t0 = await deps.trail.decide(
            request,
            caller,
            deps.ask(name, "export"),
            filters=f"evidence&{shown}",
            refusal="your job function may not export the trail",
        )
        try:
            start, end, first, last = _period(ui_of(request), request.query)
        except ValueError as e:  # what was sent cannot be used: one refusal record
            await deps.trail.deny(event, 400, "bad_filter", t0)
            raise AdminRefused(400, "bad_filter", str(e), "bad_filter", recorded=True) from None
        async with deps.trail.recording(request, event, t0) as view:
            inp = maker.inputs(start, end)
            figures = await maker.figures(inp)
            made = {
                "at_us": event.ts_us,
                "by": caller.principal.user,
                "request_id": request[REQUEST_ID],
                "instance": maker.cfg.instance_id,
            }
            pack, signature = maker.signed(inp, figures, made)
            view.rows = figures["registration"]["totals"]["accesses"]
            return pack, signature, first, last

    async def page(request: web.Request) -> web.StreamResponse:
        caller, ui = caller_of(request), ui_of(request)
        if "from" not in request.query and "to" not in request.query:
            async with deps.trail.viewing(request, caller, deps.ask("evidence")):
                return deps.renderer.page(
                    request,
                    ui,
                    "evidence.html",
                    pack=None,
                    may_export=deps.trail.allowed(caller, "export"),
                    first="",
                    last="",
                )
        pack, signature, first, last = await make(request, "evidence")
        return deps.renderer.page(
            request,
            ui,
            "evidence.html",
            pack=json.loads(canonical(pack)),
            signature=signature,
            may_export=True,
            first=first,
            last=last,
        )

    async def download(request: web.Request) -> web.StreamResponse:
        pack, signature, first, last = await make(request, "evidence-download")
        body = json.dumps({"pack": pack, "signature": signature}, ensure_ascii=False, indent=1)
        return web.Response(
            text=body,
            content_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="evidence-{first}-{last}.json"'},
        )

    router.add_get("/evidence", page, name="console:evidence")
    router.add_get("/evidence/download", download, name="console:evidence-download")
