"""Staff in browsers: login at the gateway, the session cookie, logout (decision 014).

Contract: ``BrowserLogin.authenticate(request)`` returns the Principal of a valid session and its
keyed hash, refreshing it with the provider when due, or raises ``AuthenticationError`` with a
short reason; every login, failed login, logout, refresh, expiry and revocation is an
``AuthEvent`` in the trail before its response is sent (no audit, no access: 9.1.8). The
gateway's paths live under ``/_pdgw/``: ``login`` (start, with a same-origin ``return_to``),
``callback`` (the provider's redirect), ``logout`` (POST, same-origin; local and at the provider),
``logged-out``.

Which credential counts (one rule, README "Browser login"): a request with an `Authorization`
header is judged by that header alone — bearer, the cookie ignored — otherwise by the session
cookie, on routes that accept sessions (`oidc.session_routes`; empty: all).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

from aiohttp import web

from gateway.audit.events import AuthEvent
from gateway.config.model import OidcConfig, Route
from gateway.core.errors import AuthenticationError
from gateway.core.ids import new_id
from gateway.core.metrics import Metrics
from gateway.identity.csrf import cross_site_reason, is_navigation, websocket_origin_reason
from gateway.identity.oidc import OidcClient, TokenSet
from gateway.identity.sessions import (
    LoginState,
    RevocationList,
    Session,
    SessionCodec,
    SessionInvalid,
    new_secret,
)
from gateway.identity.tokens import Principal
from gateway.web.boundary import REQUEST_ID, html_page, wants_html
from gateway.web.login import (
    CALLBACK,
    CLEAR_SITE_DATA,
    LOGGED_OUT,
    LOGIN,
    LOGOUT,
    PAGE_ORIGIN,
    PENDING_COOKIES,
    RENEWED,
    SILENT_REFUSALS,
    LoginRefused,
    LoginRequired,
    PendingCookies,
    RenewalDue,
    safe_return_to,
)

log = logging.getLogger(__name__)

TOUCH_EVERY = 60.0  # the idle timer is renewed (a new cookie) at most once a minute
MIN_RENEWAL_SECONDS = 30.0  # the soonest a session is renewed again after a login or renewal


class BrowserLogin:
    def __init__(
        self,
        cfg: OidcConfig,
        client: OidcClient,
        codec: SessionCodec,
        revocations: RevocationList,
        *,
        record: Callable[[AuthEvent], Awaitable[None]],
        metrics: Metrics,
        client_address: Callable[[web.BaseRequest], str],
        clock: Callable[[], float] = time.time,
        pages: tuple[str, ...] = (),
    ) -> None:
        """``pages``: paths under the gateway's own prefix a login may return to (the console)."""
        self._cfg = cfg
        self._pages = pages
        self._client = client
        self._codec = codec
        self._revocations = revocations
        self._record_event = record
        self._metrics = metrics
        self._client_address = client_address
        self._clock = clock
        self._used_states: dict[str, float] = {}
        secure = cfg.secure_cookies
        # `__Host-`: only settable by this origin over TLS, Path=/, no Domain: no upstream on a
        # sibling host or path can plant or shadow it. Without TLS (the demo) a plain name.
        self.session_cookie = "__Host-pdgw-session" if secure else "pdgw-session"
        self.login_cookie = "__Host-pdgw-login" if secure else "pdgw-login"
        # Set after a logout the provider could not share: the next login asks the provider to
        # re-authenticate (`prompt=login`), so Back on a shared computer logs nobody in.
        self.reauth_cookie = "__Host-pdgw-reauth" if secure else "pdgw-reauth"
        self.cookie_names = frozenset({self.session_cookie, self.login_cookie, self.reauth_cookie})

    # -- the pipeline's side -------------------------------------------------------------

    def accepts(self, route: Route | None) -> bool:
        return not self._cfg.session_routes or (
            route is not None and route.name in self._cfg.session_routes
        )

    def cross_site(self, request: web.Request, *, upgrade: bool = False) -> str | None:
        """CSRF: None, or why a cookie-authenticated request (``upgrade``: a WebSocket
        upgrade) must be refused."""
        origin = self.origin_of(request)
        reason = (
            websocket_origin_reason(request.headers, origin)
            if upgrade
            else cross_site_reason(request.method, request.headers, origin)
        )
        if reason is not None:
            self._metrics.csrf_refusals.labels(reason).inc()
        return reason

    def origin_of(self, request: web.Request) -> str:
        """The public origin of the listener ``request`` came to: the login's, or the console's
        own (decision 035)."""
        return request.config_dict.get(PAGE_ORIGIN) or self._cfg.origin

    def still_valid(self, principal: Principal) -> bool:
        """Whether a session-authenticated principal's session is neither revoked nor past its
        absolute timeout (asked by live WebSockets, decision 024)."""
        created = principal.issued_at
        if self._clock() >= created + self._cfg.session.absolute_timeout_seconds:
            return False
        return not self._revocations.is_revoked(principal.user, created)

    async def authenticate(self, request: web.Request) -> tuple[Principal, str]:
        value = request.cookies.get(self.session_cookie)
        if not value:
            raise AuthenticationError("missing_token")  # neither a token nor a session
        try:
            session = self._codec.open(value)
        except SessionInvalid as e:
            self._clear(request, self.session_cookie)
            if e.reason in ("session_expired", "session_idle"):
                # The user is known only from a cookie that opened: worth a record of its own.
                await self._event(request, "expired", e.reason, e.session)
            raise AuthenticationError(e.reason) from None
        if self._revocations.is_revoked(session.user, session.created_at):
            self._clear(request, self.session_cookie)
            await self._event(request, "revoked", "session_revoked", session)
            raise AuthenticationError("session_revoked")
        now = self._clock()
        if now >= session.refresh_at and not session.refresh_token:
            raise RenewalDue(session)  # the cookie stays: a silent login renews it
        if now >= session.refresh_at:
            session = await self._refresh(request, session)
        elif now - session.last_seen >= TOUCH_EVERY:
            session = session.touched(now)
            self._set(request, self.session_cookie, self._codec.seal(session))
        principal = Principal(
            session.user, session.roles, expires_at=session.refresh_at, issued_at=session.created_at
        )
        return principal, self._codec.session_hash(session.sid)

    async def _refresh(self, request: web.Request, session: Session) -> Session:
        """Ask the provider again (refresh token): the bound on how long a change there — a
        disabled account, a new job function — takes to reach a live session (9.2.7)."""
        try:
            tokens = await self._client.refresh(session.refresh_token)
        except AuthenticationError as e:
            self._clear(request, self.session_cookie)
            await self._event(request, "expired", e.reason, session)
            raise AuthenticationError("session_refresh_failed") from None
        p = tokens.principal
        if p.user != session.user or p.roles != session.roles:
            # A changed job function ends every session of the user; the next login records
            # the new roles (and the pipeline records the permission change).
            await self._revocations.revoke(session.user, "role_change")
            self._clear(request, self.session_cookie)
            await self._event(request, "revoked", "role_change", session)
            raise AuthenticationError("session_revoked")
        now = self._clock()
        renewed = Session(
            sid=session.sid,
            user=session.user,
            roles=session.roles,
            created_at=session.created_at,
            last_seen=now,
            refresh_at=self._refresh_at(now, p),
            refresh_token=tokens.refresh_token,
        )
        self._set(request, self.session_cookie, self._codec.seal(renewed))
        await self._event(request, "refresh", "", renewed)
        return renewed

    async def revoke_user(self, user: str, reason: str) -> None:
        """End every session of ``user`` on every replica (within the revocation poll bound):
        for callers outside the browser flow, e.g. a subject block on an employee (6.5, 6.6)."""
        await self._revocations.revoke(user, reason)

    def _refresh_at(self, now: float, p: Principal) -> float:
        """The next renewal: the refresh interval or the ID token's expiry, whichever is first —
        but not sooner than MIN_RENEWAL_SECONDS, so a provider whose ID tokens expire at once
        cannot bounce every navigation through a silent login (decision 023)."""
        due = min(now + self._cfg.session.refresh_interval_seconds, p.expires_at)
        return max(due, now + min(MIN_RENEWAL_SECONDS, self._cfg.session.refresh_interval_seconds))

    async def unauthenticated(
        self, request: web.Request, error: AuthenticationError
    ) -> web.HTTPFound | LoginRequired:
        """What a browser without a usable session gets (decision 023): a GET navigation is sent
        to log in — silently (`prompt=none`) when its session is only due for renewal — and
        comes back to the same URL; anything else a readable refusal that never speaks of
        bearer tokens, with a link to log in again in a new tab, so a form this tab sent can
        be sent again from the browser's history."""
        if is_navigation(request.method, request.headers):
            renew = error.session if isinstance(error, RenewalDue) else None
            return await self.login_redirect(request, request.raw_path, renew=renew)
        return LoginRequired(error.reason, resend=wants_html(request))

    async def login_redirect(
        self, request: web.Request, return_to: str, *, renew: Session | None = None
    ) -> web.HTTPFound:
        """Start a login: the login state sealed in its own cookie, the browser sent to the
        provider with `state`, `nonce` and a PKCE challenge. ``renew``: a silent login that
        keeps this session if the same person comes back."""
        await self._client.ensure_ready()
        login = LoginState(
            state=new_secret(),
            nonce=new_secret(),
            code_verifier=new_secret(),
            return_to=safe_return_to(return_to, self._pages) or "/",
            started_at=self._clock(),
            renews=renew.sid if renew else "",
            renews_user=renew.user if renew else "",
            created_at=renew.created_at if renew else 0.0,
        )
        self._set_logins(request, [*self._pending_logins(request), login])
        url = self._client.authorize_url(
            login.state,
            login.nonce,
            login.code_verifier,
            silent=renew is not None,
            reauthenticate=self.reauth_cookie in request.cookies,
        )
        return web.HTTPFound(url, headers={"Cache-Control": "no-store"})

    # -- the gateway's own pages -------------------------------------------------------------

    async def route(self, request: web.Request) -> web.StreamResponse:
        handlers: dict[tuple[str, str], Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            ("GET", LOGIN): self.login_handler,
            ("GET", CALLBACK): self.callback_handler,
            ("GET", LOGOUT): self.logout_page,
            ("POST", LOGOUT): self.logout_handler,
            ("GET", LOGGED_OUT): self.logged_out_handler,
            ("GET", RENEWED): self.renewed_handler,
        }
        handler = handlers.get((request.method, request.path))
        if handler is None:
            raise LoginRefused(404, "not_found", "no such page", "no_route")
        return await handler(request)

    async def login_handler(self, request: web.Request) -> web.StreamResponse:
        return_to = safe_return_to(request.query.get("return_to", "/"), self._pages)
        if return_to is None:
            await self._event(request, "login_failed", "open_redirect", None)
            raise LoginRefused(
                400,
                "bad_return_path",
                "the return path must be a path on this site",
                "open_redirect",
            )
        raise await self.login_redirect(request, return_to)

    async def callback_handler(self, request: web.Request) -> web.StreamResponse:
        sealed = request.cookies.get(self.login_cookie)
        if not sealed:
            await self._fail(request, "login_state_missing")
        try:
            logins = self._codec.open_logins(sealed or "")
        except SessionInvalid as e:
            self._clear(request, self.login_cookie)
            await self._fail(request, e.reason)
        state = request.query.get("state", "").encode()
        # Compared with every login under way in this browser (one per tab), in constant time.
        matches = [x for x in logins if hmac.compare_digest(state, x.state.encode())]
        if not matches:
            await self._fail(request, "state_mismatch" if logins else "login_expired")
        login = matches[0]
        rest = [x for x in logins if x is not login]
        if rest:  # one use: this login leaves the cookie, other tabs' stay
            self._set_logins(request, rest)
        else:
            self._clear(request, self.login_cookie)
        if self._state_used(login):
            await self._fail(request, "state_replayed")
        if "error" in request.query:
            if login.renews and request.query["error"] in SILENT_REFUSALS:
                # The provider cannot renew silently (its own session ended): ask the person.
                await self._event(request, "expired", "silent_login_refused", None)
                self._clear(request, self.session_cookie)
                raise await self.login_redirect(request, login.return_to)
            await self._fail(request, "provider_refused")  # its error text is not kept
        code = request.query.get("code")
        if not code:
            await self._fail(request, "no_code")
        try:
            tokens = await self._client.exchange(code, login.code_verifier, login.nonce)
        except AuthenticationError as e:
            await self._fail(request, e.reason)
        session, event, reason = await self._session_from_login(request, login, tokens)
        self._set(request, self.session_cookie, self._codec.seal(session))
        self._clear(request, self.reauth_cookie)
        await self._event(request, event, reason, session)
        raise web.HTTPFound(login.return_to, headers={"Cache-Control": "no-store"})

    async def _session_from_login(
        self, request: web.Request, login: LoginState, tokens: TokenSet
    ) -> tuple[Session, str, str]:
        """A new session, or — a silent re-login of the same person with the same job
        functions — the renewed one, its id and login time kept (so its absolute timeout and
        any revocation still apply: decision 023). A different job-function set ends every
        session of the user, as a refresh does, and starts a new one."""
        now = self._clock()
        p = tokens.principal
        created, sid, event, reason = now, new_secret(), "login", ""
        if login.renews and p.user == login.renews_user:
            old = self._codec.open_unchecked(request.cookies.get(self.session_cookie, ""))
            if old is not None and old.sid == login.renews and old.roles == p.roles:
                created, sid, event, reason = login.created_at, old.sid, "refresh", "silent_login"
            elif old is not None and old.sid == login.renews:
                at = await self._revocations.revoke(p.user, "role_change")
                await self._event(request, "revoked", "role_change", old)
                created = max(now, at + 0.001)  # after the revocation it just wrote
        session = Session(
            sid=sid,
            user=p.user,
            roles=p.roles,
            created_at=created,
            last_seen=now,
            refresh_at=self._refresh_at(now, p),
            refresh_token=tokens.refresh_token,
        )
        return session, event, reason

    def _pending_logins(self, request: web.Request) -> list[LoginState]:
        value = request.cookies.get(self.login_cookie)
        if not value:
            return []
        try:
            return self._codec.open_logins(value)
        except SessionInvalid:
            return []

    def _set_logins(self, request: web.Request, logins: list[LoginState]) -> None:
        self._set(
            request,
            self.login_cookie,
            self._codec.seal_logins(logins),
            max_age=int(self._cfg.session.login_timeout_seconds),
        )

    def _state_used(self, login: LoginState) -> bool:
        """A login state is good once on this replica (a copied login cookie replayed with its
        state); the provider's one-time code covers other replicas."""
        now = self._clock()
        if len(self._used_states) > 10_000:
            self._used_states = {s: t for s, t in self._used_states.items() if t > now}
        if login.state in self._used_states:
            return True
        self._used_states[login.state] = login.started_at + self._cfg.session.login_timeout_seconds
        return False

    async def _fail(self, request: web.Request, reason: str) -> NoReturn:
        await self._event(request, "login_failed", reason, None)
        raise LoginRefused(401, "login_failed", "the login could not be completed", reason)

    async def logout_handler(self, request: web.Request) -> web.StreamResponse:
        reason = cross_site_reason(request.method, request.headers, self.origin_of(request))
        if reason is not None:
            self._metrics.csrf_refusals.labels(reason).inc()
            await self._event(request, "login_failed", reason, None)
            raise LoginRefused(403, "cross_site_request", "cross-site request refused", reason)
        self._clear(request, self.session_cookie)
        value = request.cookies.get(self.session_cookie)
        session: Session | None = None
        if value:
            try:
                session = self._codec.open(value)
            except SessionInvalid:
                session = None
        if session is not None:
            # Every session of the user ends, on every replica within the poll bound.
            await self._revocations.revoke(session.user, "logout")
            await self._event(request, "logout", "", session)
        # Logged out at the provider too where it offers RP-initiated logout, back to a
        # post_logout_redirect_uri registered with it; otherwise the page says what remains.
        # On the login's origin, wherever the logout was asked (the console's has no apps to go
        # back to: decision 035).
        target = self._client.end_session_url(self._cfg.origin + LOGGED_OUT)
        raise web.HTTPSeeOther(
            target or self._cfg.origin + LOGGED_OUT + "?provider=kept",
            headers={"Cache-Control": "no-store", "Clear-Site-Data": CLEAR_SITE_DATA},
        )

    async def logout_page(self, request: web.Request) -> web.StreamResponse:
        """A page with the logout button, for apps and portals to link to: logout itself is a
        same-origin POST, so a cross-site link or image cannot log anyone out."""
        return html_page(
            200,
            "Log out",
            "Log out of every application behind this gateway.",
            request[REQUEST_ID],
            form=("Log out", LOGOUT),
        )

    async def logged_out_handler(self, request: web.Request) -> web.StreamResponse:
        message = "You have logged out. Every session of yours at this gateway has ended."
        if request.query.get("provider") == "kept":
            self._set(request, self.reauth_cookie, "1")  # the next login: prompt=login
            message += (
                " Your organisation's sign-in service offers no logout to this gateway, so you"
                " may still be signed in there. The next login here asks for your password again;"
                " still, close every browser window before you leave a shared computer."
            )
        return html_page(
            200,
            "Logged out",
            message,
            request[REQUEST_ID],
            link=("Log in again", self._cfg.home_path),
        )

    async def renewed_handler(self, request: web.Request) -> web.StreamResponse:
        return html_page(
            200,
            "Logged in again",
            "You are logged in again. Go back to the tab you were working in and reload it: your"
            " browser will offer to send the form again. You can close this tab.",
            request[REQUEST_ID],
        )

    # -- helpers --------------------------------------------------------------------------------

    async def _event(
        self, request: web.Request, event: str, reason: str, session: Session | None
    ) -> None:
        self._metrics.auth_events.labels(event, reason or "-").inc()
        await self._record_event(
            AuthEvent(
                event_id=new_id(),
                ts_us=time.time_ns() // 1000,
                request_id=request[REQUEST_ID],
                user=session.user if session else "",
                roles=list(session.roles) if session else [],
                client_ip=self._client_address(request),
                event=event,
                reason=reason,
                session=self._codec.session_hash(session.sid) if session else "",
            )
        )

    def _set(
        self, request: web.Request, name: str, value: str, *, max_age: int | None = None
    ) -> None:
        attrs = "; Path=/; HttpOnly; SameSite=Lax"
        if self._cfg.secure_cookies:
            attrs += "; Secure"
        if max_age is not None:
            attrs += f"; Max-Age={max_age}"
        self._pending(request).values.append(f"{name}={value}{attrs}")

    def _clear(self, request: web.Request, name: str) -> None:
        if name in request.cookies:
            self._set(request, name, "", max_age=0)

    @staticmethod
    def _pending(request: web.Request) -> PendingCookies:
        pending = request.get(PENDING_COOKIES)
        if pending is None:
            pending = request[PENDING_COOKIES] = PendingCookies()
        return pending
