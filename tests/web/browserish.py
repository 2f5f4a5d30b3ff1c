"""A client that logs in through the gateway like a browser, following the real provider's
pages by HTTP (the browser-login tests)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

from gateway.identity.sessions import SessionCodec
from tests.conftest import Served, ServeFactory, spool_records
from tests.oidc_provider import Provider, oidc_section

NAV = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none"}
XHR = {"Accept": "application/json", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}


class Browserish:
    """A gateway with login, and a client that follows the provider's pages like a person."""

    def __init__(self, served: Served, provider: Provider, shared: Path) -> None:
        self.served = served
        self.url = served.proxy_url
        self.provider = provider
        self.shared = shared
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.gateway = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    @property
    def codec(self) -> SessionCodec:
        key = (self.shared / "session.key").read_bytes()
        return SessionCodec(
            key, idle_timeout=900, absolute_timeout=8 * 3600, login_timeout=600, clock=time.time
        )

    async def get(
        self,
        path: str,
        cookies: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        return await self.request("GET", path, cookies, headers if headers is not None else NAV)

    async def request(
        self,
        method: str,
        path: str,
        cookies: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        h = dict(headers or {})
        if cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        async with self.gateway.request(
            method, self.url + path, headers=h, allow_redirects=False, data=data
        ) as resp:
            body = await resp.read()
        return resp, body

    async def start_login(self, path: str) -> tuple[str, str]:
        """The authorize URL and the login cookie a navigation to ``path`` gets."""
        resp, _ = await self.get(path)
        assert resp.status == 302, resp.status
        return resp.headers["Location"], resp.cookies["pdgw-login"].value

    async def at_provider(self, authorize_url: str, user: str) -> str:
        """Sign in at the provider's development login page and consent; the callback URL the
        provider sends the browser back to (not followed)."""
        url = authorize_url
        for _ in range(12):
            async with self.http.get(url, allow_redirects=False) as resp:
                body = await resp.text()
                if resp.status in (302, 303):
                    url = urljoin(url, resp.headers["Location"])
                    if url.startswith(self.url):
                        return url
                    continue
            assert resp.status == 200, (resp.status, body[:300])
            action = urljoin(url, re.search(r'action="([^"]+)"', body).group(1))  # type: ignore[union-attr]
            form = (
                {"prompt": "login", "login": user, "password": "demo"}
                if 'name="login"' in body
                else {"prompt": "consent"}
            )
            async with self.http.post(action, data=form, allow_redirects=False) as resp:
                assert resp.status in (302, 303), resp.status
                url = urljoin(action, resp.headers["Location"])
                if url.startswith(self.url):
                    return url
        raise AssertionError("the provider never sent the browser back")

    async def login(self, user: str, path: str = "/hr/employees/1001") -> str:
        """A full login; the session cookie."""
        authorize, login_cookie = await self.start_login(path)
        callback = await self.at_provider(authorize, user)
        resp, _ = await self.get(callback.removeprefix(self.url), {"pdgw-login": login_cookie})
        assert resp.status == 302, resp.status
        assert resp.headers["Location"] == path
        return resp.cookies["pdgw-session"].value

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in spool_records(self.served.spool_dir) if r["kind"] == kind]

    def auth_events(self) -> list[dict[str, Any]]:
        return self.records("auth_event")

    async def close(self) -> None:
        await self.http.close()
        await self.gateway.close()


MakeBrowser = Callable[..., Awaitable["Browserish"]]


@contextlib.asynccontextmanager
async def browser_gateways(
    serve_gateway: ServeFactory,
    provider: Provider,
    default_upstream: str,
    tmp_path: Path,
    ports: Iterator[int],
) -> AsyncIterator[MakeBrowser]:
    """A maker of gateways with browser login, each on the next of ``ports`` (the ports the
    provider's client was registered for), closed at the end: ``make(upstream_url=None,
    oidc=None, gateway=None, **session)``."""
    made: list[Browserish] = []

    async def make(
        upstream_url: str | None = None,
        oidc: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
        **session: Any,
    ) -> Browserish:
        port = next(ports)
        served = await serve_gateway(
            upstream_url or default_upstream,
            listen={"proxy": {"port": port}},
            oidc={**oidc_section(tmp_path, provider, port, **session), **(oidc or {})},
            **(gateway or {}),
        )
        b = Browserish(served, provider, tmp_path)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await b.close()
