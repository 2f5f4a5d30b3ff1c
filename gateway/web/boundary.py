"""The one error boundary of every listener: around each route of the proxy app, the outermost
middleware of the admin and console apps. It assigns the request id and turns every exception
into a JSON response ``{"error", "message", "request_id"}`` with ``X-Request-Id``, in one place.

SECURITY: a client sees only a ``GatewayError``'s code and public message (and its public
details), or a generic text for the status; never a library's or an exception's own message (it
may carry key material, internal paths or personal data). Unexpected exceptions are logged (the
traceback, no request data) and answered 500.
"""

from __future__ import annotations

import functools
import html
import http
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.core.errors import GatewayError
from gateway.core.ids import new_id
from gateway.core.logs import request_id_var
from gateway.core.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes for the statuses aiohttp's router raises itself (unknown path, method, body too large).
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    realm: str = "pd-gateway",
    details: Mapping[str, Any] | None = None,
) -> web.Response:
    headers = {"X-Request-Id": request_id}
    if status == 401:
        # RFC 6750 §3; the error description stays generic on purpose.
        headers["WWW-Authenticate"] = f'Bearer realm="{realm}", error="invalid_token"'
    return web.json_response(
        {**(details or {}), "error": code, "message": message, "request_id": request_id},
        status=status,
        headers=headers,
    )


def wants_html(request: web.BaseRequest) -> bool:
    """A browser navigation gets a readable page; API clients (a bearer token, fetch/XHR, or no
    HTML in `Accept`) get JSON."""
    if "Authorization" in request.headers:
        return False
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in request.headers.get("Accept", "")


def html_page(
    status: int,
    title: str,
    message: str,
    request_id: str,
    *,
    link: tuple[str, str] | None = None,
    new_tab: bool = False,
    form: tuple[str, str] | None = None,
) -> web.Response:
    """A small readable HTML page; every value escaped, no script, not cached. ``new_tab``: the
    link opens in a new tab, so this tab keeps its history (a form the browser can resend);
    ``form``: a button that POSTs to a same-origin path."""
    target = ' target="_blank" rel="noopener"' if new_tab else ""
    more = (
        f'<p><a id="next" href="{html.escape(link[1])}"{target}>{html.escape(link[0])}</a></p>'
        if link
        else ""
    )
    if form is not None:  # one button that POSTs to a same-origin path
        more += (
            f'<form method="post" action="{html.escape(form[1])}">'
            f'<button id="submit" type="submit">{html.escape(form[0])}</button></form>'
        )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{more}"
        f"<p><small>Request id <code>{html.escape(request_id)}</code></small></p>"
        "</body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={
            "X-Request-Id": request_id,
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        },
    )


def _render(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    realm: str,
    details: Mapping[str, Any] | None = None,
    link: tuple[str, str, bool] | None = None,
) -> web.Response:
    if wants_html(request):
        title = f"{status} {_phrase(status).capitalize()}"
        return html_page(
            status,
            title,
            message[:1].upper() + message[1:] + ".",
            request_id,
            link=link[:2] if link else None,
            new_tab=bool(link and link[2]),
        )
    return error_response(status, code, message, request_id, realm=realm, details=details)


def error_middleware(
    *, metrics: Metrics, realm: str = "pd-gateway", route_label: str = "-"
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Outermost: assigns the request id and maps every exception to a response, in one place.

    ``realm`` names the listener in ``WWW-Authenticate``; ``route_label`` is the ``route`` label
    under which an unexpected error is counted in ``pdgw_denials_total``.
    """

    @web.middleware
    async def impl(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _bounded(handler, metrics, realm, route_label, request)

    return impl


def error_boundary(handler: Handler, *, metrics: Metrics) -> Handler:
    """``handler`` inside the boundary, for an app whose every route is wrapped so and which
    therefore has no middleware: the proxy app, whose routes take every method and path (only a
    target with no path at all gets the router's own 404: decision 037). A middleware would
    cost each proxied request two more coroutine layers (aiohttp adds one of its own)."""
    return functools.partial(_bounded, handler, metrics, "pd-gateway", "-")


async def _bounded(
    handler: Handler, metrics: Metrics, realm: str, route_label: str, request: web.Request
) -> web.StreamResponse:
    request_id = new_id()
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    try:
        resp = await handler(request)
    except GatewayError as e:
        resp = _render(
            request,
            e.status,
            e.code,
            e.public_message,
            request_id,
            realm=realm,
            details=e.public_details,
            link=e.public_link,
        )
        if e.close_connection:
            resp.force_close()
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # The router's own 404/405/413: its text page would carry no request id.
        resp = _render(
            request,
            e.status,
            _HTTP_CODES.get(e.status, "http_error"),
            _phrase(e.status),
            request_id,
            realm=realm,
        )
        if "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except Exception:
        log.exception("unhandled error in request path")
        metrics.denials.labels(route_label, "internal_error").inc()
        return _render(request, 500, "internal_error", "internal error", request_id, realm=realm)
    finally:
        request_id_var.reset(token)
    if not resp.prepared:
        resp.headers.setdefault("X-Request-Id", request_id)
    return resp


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return "request refused"
