"""The console in a worker of `serve --workers N` (decision 025): the worker serves the browser
(it holds no store and no trail readers) — it authenticates the session, applies the CSRF rule,
and forwards the request over loopback to its supervisor's internal console listener, with the
caller it authenticated sealed in ``X-PD-Console-Caller`` (``identity.seal``). The supervisor's
console authorises, reads, records and answers; the answer is relayed as it streams.

Only an allowlist of headers crosses, either way: nothing the browser sends can pose as the
sealed caller, and only the console's own cookie (the language) comes back besides the page.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.identity.csrf import SAFE_METHODS
from gateway.web.admin import AdminRefused
from gateway.web.boundary import REQUEST_ID
from gateway.web.console.access import ConsoleTrail
from gateway.web.console.identity import CALLER_HEADER, MAX_FORM_BYTES, SessionCallers, seal
from gateway.web.console.kit import answer_another_origin
from gateway.web.console.render import LANG_COOKIE
from gateway.web.trail import Ask

FORWARD_TIMEOUT_SECONDS = 120.0  # a query's own bound is 60 s (gateway.audit.query)
_REQUEST_HEADERS = ("Accept", "Accept-Language", "Content-Type", "HX-Request")
_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "Location",
    "Cache-Control",
    "Content-Security-Policy",
    "Referrer-Policy",
    "X-Content-Type-Options",
    "Cross-Origin-Opener-Policy",
)


class ConsoleFront:
    def __init__(
        self,
        *,
        target: str,
        secret: bytes,
        callers: SessionCallers,
        trail: ConsoleTrail,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        """``target``: the supervisor's internal console listener (http://127.0.0.1:PORT)."""
        self._target = target.rstrip("/")
        self._secret = secret
        self._callers = callers
        self._trail = trail
        self._http = http

    async def handle(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
        lang = request.cookies.get(LANG_COOKIE)
        if lang:
            headers["Cookie"] = f"{LANG_COOKIE}={lang}"
        body = b""
        if not tail.startswith("static/"):  # the static files hold nothing of the trail
            caller = await self._callers.caller(request)
            ask = Ask("console", "read", f"console:{tail.split('/')[0] or 'home'}", 0)
            home = request.path.removesuffix(tail)
            await answer_another_origin(self._trail, request, caller, ask, tail, home)
            if request.method not in SAFE_METHODS:
                reason = self._callers.cross_site(request)
                if reason is not None:
                    await self._trail.refused(
                        request, caller, ask, 403, reason, "cross-site request refused"
                    )
                if (request.content_length or 0) > MAX_FORM_BYTES:
                    await self._trail.refused(
                        request, caller, ask, 413, "too_large", "the form is too large"
                    )
                body = await request.read()
            headers[CALLER_HEADER] = seal(
                self._secret,
                caller,
                request[REQUEST_ID],
                method=request.method,
                target=request.raw_path,
                body=body,
            )
        try:
            async with self._http().request(
                request.method,
                # As received, not re-encoded by yarl (which would decode a query's `%2F`): the
                # seal binds the target the supervisor sees byte for byte.
                URL(self._target + request.raw_path, encoded=True),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS),
            ) as answer:
                resp = web.StreamResponse(status=answer.status)
                resp.headers["X-Request-Id"] = request[REQUEST_ID]  # the supervisor's too
                for name in _RESPONSE_HEADERS:
                    if name in answer.headers:
                        resp.headers[name] = answer.headers[name]
                for value in answer.headers.getall("Set-Cookie", []):
                    if value.startswith(LANG_COOKIE + "="):
                        # Made on the plain loopback hop: `Secure` as the browser's connection.
                        secure = request.secure and "; secure" not in value.lower()
                        resp.headers.add("Set-Cookie", value + "; Secure" if secure else value)
                await resp.prepare(request)
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, TimeoutError):
            raise AdminRefused(
                502, "console_unavailable", "the console cannot be reached now", "console_down"
            ) from None
