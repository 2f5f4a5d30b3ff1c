"""The real `oidc-provider` (npm, deploy/oidc-demo/) on a loopback port, for the browser-login
tests: test clients and users, keys generated at each start."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.testing.chserver import free_port
from tests.conftest import ROOT

DEMO = ROOT / "deploy" / "oidc-demo"
USERS = {
    "alice": ["hr_officer"],
    "bob": ["accountant"],
    "mallory": ["support_agent"],
}
CLIENT_ID = "pd-gateway-test"


@dataclass
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    gateway_ports: list[int]
    proc: subprocess.Popen[bytes]
    config: Path

    def set_roles(self, user: str, roles: list[str]) -> None:
        """Change a user's job functions at the provider (read at each sign-in and refresh)."""
        data = json.loads(self.config.read_text())
        data["users"][user] = roles
        self.config.write_text(json.dumps(data))


def provider_available() -> bool:
    return (DEMO / "node_modules" / "oidc-provider").is_dir()


@contextmanager
def run_provider(
    tmp: Path,
    gateway_ports: list[int],
    users: dict[str, list[str]] | None = None,
    ttl: dict[str, int] | None = None,
    *,
    refresh_tokens: str = "always",
    end_session: bool = True,
    host: str = "127.0.0.1",
) -> Iterator[Provider]:
    """A provider whose one confidential client may return to ``/_pdgw/callback`` on each of
    ``gateway_ports`` (the gateways the test will start there). ``refresh_tokens="spec"``: only
    for `offline_access` with `prompt=consent` (oidc-provider's own rule); ``end_session``:
    RP-initiated logout offered; ``host``: the issuer's host name (`localhost` keeps its cookies
    apart from gateways on 127.0.0.1, as another site's would be)."""
    port = free_port()
    issuer = f"http://{host}:{port}"
    secret = secrets.token_urlsafe(24)
    origins = [f"{scheme}://127.0.0.1:{p}" for p in gateway_ports for scheme in ("http", "https")]
    cfg = {
        "issuer": issuer,
        "port": port,
        "users": dict(users or USERS),
        "ttl": ttl or {},
        "refresh_tokens": refresh_tokens,
        "end_session": end_session,
        "clients": [
            {
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "redirect_uris": [o + "/_pdgw/callback" for o in origins],
                "post_logout_redirect_uris": [o + "/_pdgw/logged-out" for o in origins],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        ],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "provider.json"
    path.write_text(json.dumps(cfg))
    log = (tmp / "provider.log").open("wb")
    proc = subprocess.Popen(
        ["node", str(DEMO / "provider.mjs"), str(path)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(
                    issuer + "/.well-known/openid-configuration", timeout=1
                ):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "oidc-provider did not start:\n" + (tmp / "provider.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield Provider(issuer, CLIENT_ID, secret, gateway_ports, proc, path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class ProviderLike(Protocol):
    """What the gateway's `oidc` section needs of a provider (this one or tests/realapps.py's)."""

    issuer: str
    client_id: str
    client_secret: str


def oidc_section(
    tmp: Path, provider: ProviderLike, gateway_port: int, scheme: str = "http", **session: object
) -> dict[str, object]:
    """The gateway config's `oidc` section for a gateway on ``gateway_port``; the session key
    and revocation list live in ``tmp`` (shared by every gateway given the same ``tmp``)."""
    from cryptography.fernet import Fernet

    key = tmp / "session.key"
    if not key.exists():
        key.write_bytes(Fernet.generate_key())
    secret = tmp / "client-secret"
    secret.write_text(provider.client_secret)
    return {
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret_file": str(secret),
        "redirect_uri": f"{scheme}://127.0.0.1:{gateway_port}/_pdgw/callback",
        "session": {
            "key_file": str(key),
            "revocation_file": str(tmp / "revoked.jsonl"),
            "revocation_poll_seconds": 0.2,
            **session,
        },
    }


def revoke_sessions(tmp: Path, user: str) -> None:
    """End ``user``'s sessions on every gateway whose `oidc` section ``oidc_section(tmp, …)``
    made, as `pd-gateway session revoke` does: a line in the shared revocation list, the user
    named by their keyed hash (decision 021), never in clear."""
    import time

    from gateway.identity.sessions import RevocationList, append_revocation

    path = tmp / "revoked.jsonl"
    shared = RevocationList.shared(path, session_key_file=tmp / "session.key", poll=0, actor="")
    append_revocation(path, shared.user_hash(user), time.time(), "test", "test")
