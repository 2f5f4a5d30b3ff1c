"""The console as an aiohttp sub-application (decision 025): its routes, the caller of every
request, the CSRF rule, the headers of every response, readable refusals in the user's language.

Contract:
- Every request but the static files has a caller (``CallerSource``) before a handler runs, and
  every handler authorises and records what it does through ``ConsoleTrail`` (9.2.6). A refusal
  decided here with a known caller — a cross-site form, a body too large, a page that does not
  exist — is recorded too (every refusal with a valid credential is an event, decision 013).
- Static files (the stylesheet, the console's script, the vendored libraries) are package data,
  served by the gateway itself without a caller: they hold nothing of the trail.
- Every response carries ``render.security_headers``; refusals are pages in the user's language
  with the request id (the error boundary around the app handles anything else).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import as_file, files
from pathlib import Path

from aiohttp import web

from gateway.core.errors import GatewayError
from gateway.identity.csrf import SAFE_METHODS
from gateway.web.boundary import REQUEST_ID
from gateway.web.console import anomaly, evidence, health, people, requests, search, subject
from gateway.web.console.identity import MAX_FORM_BYTES
from gateway.web.console.kit import (
    CALLER,
    UI_OF,
    ConsoleDeps,
    answer_another_origin,
    caller_of,
    ui_of,
)
from gateway.web.login import LoginRequired

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC = "console:static"
_TITLES = {
    400: "The request could not be used",
    401: "Log in to use the console",
    403: "Refused",
    404: "Not found",
    405: "Not allowed",
    409: "Busy",
    413: "Too large",
    503: "Unavailable",
}


def static_dir() -> Path:
    """The static files' directory (package data; a real directory in a wheel or a checkout)."""
    with as_file(files("gateway.web.console").joinpath("static")) as path:
        return Path(path)


def _page_name(request: web.Request) -> str:
    name = request.match_info.route.name or ""
    return name.removeprefix("console:") or "console"


def _middleware(deps: ConsoleDeps) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def console(request: web.Request, handler: Handler) -> web.StreamResponse:
        ui = deps.renderer.ui(request)
        request[UI_OF] = ui
        if request.match_info.route.name == STATIC:
            resp = await handler(request)
            resp.headers.update(deps.renderer.headers)
            return resp
        try:
            request[CALLER] = caller = await deps.callers.caller(request)
            ask = deps.ask(_page_name(request), "read")
            page = request.path.removeprefix(deps.cfg.path)
            await answer_another_origin(deps.trail, request, caller, ask, page, deps.cfg.path)
            if request.method not in SAFE_METHODS:
                reason = deps.callers.cross_site(request)
                if reason is not None:  # the rule of proxied apps (decision 014)
                    await deps.trail.refused(
                        request, caller, ask, 403, reason, "cross-site request refused"
                    )
                if (request.content_length or 0) > MAX_FORM_BYTES:
                    await deps.trail.refused(
                        request, caller, ask, 413, "too_large", "the form is too large"
                    )
            try:
                resp = await handler(request)
            except web.HTTPNotFound:
                await deps.trail.refused(request, caller, ask, 404, "no_route", "no such page")
            except web.HTTPMethodNotAllowed:
                await deps.trail.refused(
                    request, caller, ask, 405, "method_not_allowed", "method not allowed here"
                )
        except web.HTTPException as e:
            if e.status >= 400:
                raise
            deps.renderer.decorate(request, e)  # a redirect: to log in, or after a form
            e.headers["X-Request-Id"] = request[REQUEST_ID]
            raise
        except LoginRequired:
            raise  # the gateway's own page, with its link to log in in a new tab (decision 023)
        except GatewayError as e:
            return deps.renderer.page(
                request,
                ui,
                "error.html",
                status=e.status,
                title=_TITLES.get(e.status, "Refused"),
                message=e.public_message,
                request_id=request[REQUEST_ID],
                # Refused by the policy: the pages are closed to this job function, every one.
                signed_in=CALLER in request and e.status != 403,
                show_nav=e.status != 403,
            )
        deps.renderer.decorate(request, resp)
        return resp

    return console


async def _home(request: web.Request) -> web.StreamResponse:
    deps: ConsoleDeps = request.app[DEPS]
    caller, ui = caller_of(request), ui_of(request)
    async with deps.trail.viewing(request, caller, deps.ask("home")):
        return deps.renderer.page(
            request,
            ui,
            "home.html",
            may_block=deps.trail.allowed(caller, "block"),
            may_review=deps.trail.allowed(caller, "create"),
        )


DEPS = web.AppKey("console_deps", ConsoleDeps)


def build_console(deps: ConsoleDeps) -> web.Application:
    """The console's app, to be mounted at ``deps.cfg.path`` (``add_subapp``)."""
    app = web.Application(middlewares=[_middleware(deps)], client_max_size=MAX_FORM_BYTES)
    app[DEPS] = deps
    app.router.add_static("/static/", static_dir(), name=STATIC, append_version=False)
    app.router.add_get("/", _home, name="console:home")
    search.register(app.router, deps)
    subject.register(app.router, deps)
    people.register(app.router, deps)
    anomaly.register(app.router, deps)
    health.register(app.router, deps)
    requests.register(app.router, deps)
    evidence.register(app.router, deps)
    return app
