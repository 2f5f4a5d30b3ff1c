"""The console under test: a gateway on its real listeners with a `console` section, a real
store (chdb or clickhouse-server), and staff signed in with session cookies sealed by the
gateway's own codec under its key — what the browser login makes after a login at the provider
(the OpenID provider itself is exercised by the browser tests, test_console_e2e.py)."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from gateway.identity.sessions import Session, SessionCodec

CONSOLE = "/_pdgw/console/"
# The data subject of the console tests: a personnel number with a dot, so that no hex event id,
# base64url hash or sealed token in a URL can hold it by chance (plain "1001" once turned up
# inside a random event id in a link, and the check for ids in clear failed on it).
SUBJECT = "emp.1001"
NAV = {
    "Accept": "text/html",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Site": "same-origin",
}
STAFF = {
    "grace": ("dpo",),
    "frank": ("security_officer",),
    "alice": ("hr_officer",),
    "carol": ("sales_manager",),
}


def console_oidc(home: Path, port: int, issuer: str = "http://127.0.0.1:9") -> dict[str, Any]:
    """An `oidc` section whose provider is never asked: sessions below never need a refresh."""
    key = home / "session.key"
    if not key.exists():
        key.write_bytes(Fernet.generate_key())
    (home / "client-secret").write_text("s3cret")
    return {
        "issuer": issuer,
        "client_id": "pd-gateway-test",
        "client_secret_file": str(home / "client-secret"),
        "redirect_uri": f"http://127.0.0.1:{port}/_pdgw/callback",
        "session": {
            "key_file": str(key),
            "revocation_file": str(home / "revoked.jsonl"),
            "refresh_interval_seconds": 3600,
        },
    }


def session_cookie(home: Path, user: str) -> str:
    codec = SessionCodec(
        (home / "session.key").read_bytes(),
        idle_timeout=900,
        absolute_timeout=8 * 3600,
        login_timeout=600,
        clock=time.time,
    )
    now = time.time()
    return codec.seal(
        Session(
            sid=secrets.token_urlsafe(16),
            user=user,
            roles=STAFF[user],
            created_at=now,
            last_seen=now,
            refresh_at=now + 3600,
            refresh_token="never-used",
        )
    )


@dataclass
class Staff:
    """One employee's browser: their session cookie on every request, like a browser sends."""

    url: str
    origin: str
    cookie: str
    http: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)  # every URL asked for (no subject id in any)

    async def get(self, path: str, **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
        return await self.request("GET", path, headers=headers)

    async def post(
        self, path: str, data: dict[str, str], **headers: str
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        h = {"Origin": self.origin, **headers}
        return await self.request("POST", path, data=data, headers=h)

    async def request(
        self, method: str, path: str, *, headers: dict[str, str], data: Any = None
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        url = path if path.startswith("http") else self.url + path
        self.seen.append(url)
        h = {**NAV, "Cookie": f"pdgw-session={self.cookie}", **headers}
        async with self.http.request(
            method, url, headers=h, data=data, allow_redirects=False
        ) as resp:
            body = await resp.text()
            if "Location" in resp.headers:
                self.seen.append(resp.headers["Location"])
        return resp.status, body, resp


def links(html: str) -> list[str]:
    return re.findall(r'(?:href|action|hx-get)="([^"]+)"', html)


def console_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "access" and r["route"].startswith("console")]
