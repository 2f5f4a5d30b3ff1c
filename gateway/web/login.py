"""Browser login's vocabulary (decisions 014, 023): the gateway's own paths, the return-path rule
(no open redirects), the cookies a response must carry, and the refusals a browser without a
usable session gets. Shared by ``web.browser`` (the login flow) and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from gateway.config.vocabulary import GATEWAY_PATH_PREFIX
from gateway.core.errors import AuthenticationError, Refused
from gateway.identity.sessions import Session

CALLBACK = GATEWAY_PATH_PREFIX + "callback"
LOGIN = GATEWAY_PATH_PREFIX + "login"
LOGOUT = GATEWAY_PATH_PREFIX + "logout"
LOGGED_OUT = GATEWAY_PATH_PREFIX + "logged-out"
RENEWED = GATEWAY_PATH_PREFIX + "renewed"
# What a provider answers a `prompt=none` login it cannot complete silently (OIDC Core §3.1.2.6):
# then the person is asked to log in.
SILENT_REFUSALS = frozenset(
    {"login_required", "interaction_required", "consent_required", "account_selection_required"}
)
# Logout clears what this site left in the browser: its cache (Back shows nothing), its cookies
# (the apps' own sessions too) and its storage (W3C Clear Site Data).
CLEAR_SITE_DATA = '"cache", "cookies", "storage"'
MAX_RETURN_TO = 2048


@dataclass(slots=True)
class PendingCookies:
    """Set-Cookie values for this request's response, added by ``on_response_prepare`` so they
    reach streamed upstream responses and error pages alike."""

    values: list[str] = field(default_factory=list)


PENDING_COOKIES = web.RequestKey("pdgw_pending_cookies", PendingCookies)
# The public origin of the listener an app serves, where it is not the login's (the origin of
# oidc.redirect_uri): the console's (decision 035). A state-changing request's `Origin` must be it.
PAGE_ORIGIN = web.AppKey("pdgw_page_origin", str)


async def add_pending_cookies(request: web.Request, resp: web.StreamResponse) -> None:
    """``on_response_prepare`` of the proxy app: this request's cookies on whatever answers it."""
    pending = request.get(PENDING_COOKIES)
    if pending is not None:
        for value in pending.values:
            resp.headers.add("Set-Cookie", value)


class LoginRefused(Refused):
    """A login, logout or return path refused; ``reason`` for the trail only."""


class RenewalDue(AuthenticationError):
    """The session is due for renewal and has no refresh token: a navigation renews it with a
    silent login (decision 023); any other request is refused until then."""

    def __init__(self, session: Session) -> None:
        super().__init__("session_renewal_due")
        self.session = session


class LoginRequired(Refused):
    """A browser request without a usable session that cannot be sent to log in (not a GET
    navigation): a page, or JSON, that says so and links to the login (decision 023)."""

    def __init__(self, reason: str, *, resend: bool) -> None:
        message = (
            "your session at this gateway has ended, so what you sent has not been saved. "
            "Log in again in a new tab with the link below, then come back to this tab and "
            "reload it: your browser will offer to send the form again"
            if resend
            else "your session at this gateway has ended: log in again"
        )
        super().__init__(401, "login_required", message, reason)
        self.public_link = ("Log in again (opens a new tab)", LOGIN + "?return_to=" + RENEWED, True)
        self.public_details = {"login_url": LOGIN}


def safe_return_to(value: str | None, pages: tuple[str, ...] = ()) -> str | None:
    """A same-origin path to return to after login, or None (open redirects refused): an
    absolute path, not `//host` or `/\\host` (browsers read both as another host), no scheme,
    no control characters, bounded; under the gateway's own prefix only the renewal page and
    the ``pages`` given (the console's path, decision 025)."""
    if value is None or not value.startswith("/") or len(value) > MAX_RETURN_TO:
        return None
    if value.startswith(("//", "/\\")) or "\\" in value:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    if value.startswith(GATEWAY_PATH_PREFIX) and not (
        value == RENEWED or (pages and value.startswith(pages))
    ):
        return None  # never back into the login machinery
    return value
