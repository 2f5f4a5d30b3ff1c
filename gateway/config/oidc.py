"""The `oidc` section: browser login at the gateway as a confidential client of the
organisation's OpenID provider, and its `session` subsection (decision 014). Absent: bearer
tokens only."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.model import OidcConfig, Route, Secret, SessionConfig
from gateway.config.reader import Section, http_url, positive
from gateway.config.vocabulary import GATEWAY_PATH_PREFIX


def parse_oidc(top: Section, tls_on: bool, routes: tuple[Route, ...]) -> OidcConfig | None:
    o = top.optional("oidc")
    if o is None:
        return None
    issuer = o.get("issuer", str, ..., http_url)
    client_id = o.get("client_id", str)
    redirect_uri = o.get("redirect_uri", str, ..., http_url)
    if redirect_uri is not None:
        parts = urlsplit(redirect_uri)
        if not parts.path.startswith(GATEWAY_PATH_PREFIX) or parts.query or parts.fragment:
            o.problems.add(
                o.key("redirect_uri"), f"must be a path under {GATEWAY_PATH_PREFIX}, no query"
            )
        elif tls_on != (parts.scheme == "https"):
            o.problems.add(o.key("redirect_uri"), "must be https:// exactly when TLS is on")
    secret = ""
    secret_file = o.file("client_secret_file", o.path_of("client_secret_file"))
    if secret_file is not None and secret_file.is_file():
        secret = secret_file.read_text(encoding="utf-8").strip()
        if not secret:
            o.problems.add(o.key("client_secret_file"), "is empty")
    scopes = tuple(str(s) for s in o.get("scopes", list, list(OidcConfig.scopes)))
    if "openid" not in scopes:
        o.problems.add(o.key("scopes"), "must include openid")
    home_path = o.get("home_path", str, OidcConfig.home_path)
    if not home_path.startswith("/") or home_path.startswith("//") or "\\" in home_path:
        o.problems.add(o.key("home_path"), "must be a path on this site, like /hr/")
    names = {r.name for r in routes}
    session_routes = frozenset(str(n) for n in o.get("session_routes", list, []))
    for name in sorted(session_routes - names):
        o.problems.add(o.key("session_routes"), f"no route named {name!r}")
    for r in routes:
        if r.prefix.startswith(GATEWAY_PATH_PREFIX.rstrip("/")):
            o.problems.add(o.key("redirect_uri"), f"route {r.name} uses {GATEWAY_PATH_PREFIX}")
    cfg = OidcConfig(
        issuer=issuer or "",
        client_id=client_id or "",
        client_secret=Secret(secret),
        redirect_uri=redirect_uri or "",
        session=_parse_session(o.section("session")),
        scopes=scopes,
        ca_file=o.file("ca_file", o.path_of("ca_file", None)),
        session_routes=session_routes,
        secure_cookies=tls_on,
        home_path=home_path,
        consent_for_offline_access=o.get(
            "consent_for_offline_access", bool, OidcConfig.consent_for_offline_access
        ),
    )
    o.finish()
    return cfg


def _parse_session(s: Section) -> SessionConfig:
    D = SessionConfig  # the defaults
    key_file = s.file("key_file", s.path_of("key_file"))
    if key_file is not None and key_file.is_file():
        _check_fernet_key(s, key_file)
    revocation = s.path_of("revocation_file")  # created at the first revocation
    idle = s.get("idle_timeout_seconds", float, D.idle_timeout_seconds, positive)
    absolute = s.get("absolute_timeout_seconds", float, D.absolute_timeout_seconds, positive)
    if idle is not None and absolute is not None and idle > absolute:
        s.problems.add(s.key("idle_timeout_seconds"), "must not exceed absolute_timeout_seconds")
    session = SessionConfig(
        key_file=key_file or Path(),
        revocation_file=revocation or Path(),
        idle_timeout_seconds=idle,
        absolute_timeout_seconds=absolute,
        refresh_interval_seconds=s.get(
            "refresh_interval_seconds", float, D.refresh_interval_seconds, positive
        ),
        revocation_poll_seconds=s.get(
            "revocation_poll_seconds", float, D.revocation_poll_seconds, positive
        ),
        login_timeout_seconds=s.get(
            "login_timeout_seconds", float, D.login_timeout_seconds, positive
        ),
    )
    s.finish()
    return session


def _check_fernet_key(sec: Section, path: Path) -> None:
    from cryptography.fernet import Fernet

    try:
        Fernet(path.read_bytes().strip())
    except (OSError, ValueError):
        sec.problems.add(
            sec.key("key_file"),
            f"{path} is not a Fernet key (make one: pd-gateway session keygen --out FILE)",
        )
