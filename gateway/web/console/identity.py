"""Who is using the console (decision 025): the browser session, or — in the process that owns
the store when a worker served the browser — the caller the worker authenticated, signed.

Contract:
- ``SessionCallers`` (a single process, and a worker's front): the gateway's browser session
  (decision 014) is the only credential; a request with an ``Authorization`` header is refused
  (the console is for browsers; the audit API takes tokens). Without a valid session a
  navigation is sent to log in (a session due for renewal: silently, decision 023) and comes
  back to the page it asked for; anything else gets 401 ``login_required``.
  Either is counted with the anonymous refusals (decision 013). ``cross_site`` is the CSRF rule
  of proxied apps (gateway.identity.csrf).
- ``seal``/``unseal``: the caller a worker authenticated, in the ``X-PD-Console-Caller`` header
  of the request it forwards over loopback, HMAC-SHA256-signed with a secret of this run that only
  the supervisor and its workers hold, bound to the method, the path with its query, the body's
  hash and a time (±``MAX_SKEW_SECONDS``). SECURITY: ``X-PD-*`` headers from clients are dropped
  by the proxy before any upstream sees them, the worker builds the forwarded request's headers
  from an allowlist, and ``SignedCallers`` accepts the header on the supervisor's internal
  loopback listener only — never from a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import web

from gateway.audit.refusals import AnonymousRefusals
from gateway.config.model import IPNetwork
from gateway.core.errors import AuthenticationError
from gateway.forwarding.headers import client_address
from gateway.identity.tokens import Principal
from gateway.web.admin import AdminRefused
from gateway.web.boundary import REQUEST_ID
from gateway.web.browser import BrowserLogin
from gateway.web.trail import Caller

CALLER_HEADER = "X-PD-Console-Caller"
MAX_SKEW_SECONDS = 30.0
MAX_FORM_BYTES = 64 * 1024  # the console's forms are small; a larger body is refused


class CallerSource(Protocol):
    async def caller(self, request: web.Request) -> Caller:
        """The caller, or a refusal (a redirect to log in, or 401)."""

    def cross_site(self, request: web.Request) -> str | None:
        """Why a state-changing request must be refused as cross-site, or None."""


def _unauthenticated(reason: str) -> AdminRefused:
    return AdminRefused(401, "unauthenticated", "log in to use the console", reason, recorded=True)


class SessionCallers:
    def __init__(
        self,
        browser: Callable[[], BrowserLogin],
        *,
        trusted: Sequence[IPNetwork],
        anonymous: AnonymousRefusals,
    ) -> None:
        """``browser``: the process's browser login (built once the event loop runs)."""
        self._browser = browser
        self._trusted = trusted
        self._anonymous = anonymous

    async def caller(self, request: web.Request) -> Caller:
        browser = self._browser()
        client = client_address(request, self._trusted)
        if "Authorization" in request.headers:
            self._anonymous.count("console", "bearer_on_console", 401, client, request[REQUEST_ID])
            raise _unauthenticated("bearer_on_console")
        try:
            principal, session = await browser.authenticate(request)
        except AuthenticationError as e:
            self._anonymous.count("console", e.reason, 401, client, request[REQUEST_ID])
            # As on the proxied apps (decision 023): a navigation goes to log in (silently when
            # the session is only due for renewal) and comes back; anything else is 401
            # `login_required`, a page with a link to log in again in a new tab.
            raise await browser.unauthenticated(request, e) from None
        return Caller(principal, "session", session, client)

    def cross_site(self, request: web.Request) -> str | None:
        return self._browser().cross_site(request)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bound(method: str, target: str, body: bytes) -> dict[str, str]:
    return {"m": method, "p": target, "b": hashlib.sha256(body).hexdigest()}


def seal(
    secret: bytes,
    caller: Caller,
    request_id: str,
    *,
    method: str,
    target: str,
    body: bytes,
    now: float | None = None,
) -> str:
    """The header value for a request forwarded to the supervisor (``target``: raw path+query)."""
    p = caller.principal
    payload = {
        "u": p.user,
        "r": list(p.roles),
        "a": caller.auth,
        "s": caller.session,
        "ip": caller.client_ip,
        "rid": request_id,
        "t": time.time() if now is None else now,
        **_bound(method, target, body),
    }
    text = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return f"{text}.{_b64(mac)}"


def unseal(
    secret: bytes,
    value: str,
    *,
    method: str,
    target: str,
    body: bytes,
    now: float | None = None,
) -> tuple[Caller, str]:
    """The caller and the request id a worker sealed; ValueError (with a short reason) if the
    header is malformed, not signed with ``secret``, stale, or for another request."""
    text, _, mac = value.partition(".")
    expected = _b64(hmac.new(secret, text.encode(), hashlib.sha256).digest())
    # Compared as text in its one canonical encoding: no other spelling of the MAC opens it.
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
        raise ValueError("caller_bad_signature")
    try:
        payload = json.loads(_unb64(text))
        when = float(payload["t"])
        bound = {k: payload[k] for k in ("m", "p", "b")}
        principal = Principal(
            str(payload["u"]), tuple(str(r) for r in payload["r"]), expires_at=when
        )
        caller = Caller(principal, str(payload["a"]), str(payload["s"]), str(payload["ip"]))
        request_id = str(payload["rid"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("caller_malformed") from None
    if abs((time.time() if now is None else now) - when) > MAX_SKEW_SECONDS:
        raise ValueError("caller_stale")
    if bound != _bound(method, target, body):
        raise ValueError("caller_other_request")
    return caller, request_id


class SignedCallers:
    """The supervisor's internal console listener: only requests its workers signed."""

    def __init__(self, secret: bytes, *, anonymous: AnonymousRefusals) -> None:
        self._secret = secret
        self._anonymous = anonymous

    async def caller(self, request: web.Request) -> Caller:
        value = request.headers.get(CALLER_HEADER, "")
        body = await request.read()
        try:
            caller, request_id = unseal(
                self._secret, value, method=request.method, target=request.raw_path, body=body
            )
        except ValueError as e:
            reason = str(e) if value else "caller_missing"
            peer = request.remote or "-"
            self._anonymous.count("console", reason, 401, peer, request[REQUEST_ID])
            raise _unauthenticated(reason) from None
        request[REQUEST_ID] = request_id  # the worker's: one id for the whole request
        return caller

    def cross_site(self, request: web.Request) -> str | None:
        return None  # checked by the worker that served the browser
