"""Bearer token → Principal: JWT verification with python-jose against a JWKS.

Contract: ``TokenVerifier.verify(raw)`` returns a Principal or raises AuthenticationError with a
short machine reason for the audit trail (never shown to the client). The algorithm allowlist
comes from config and is checked against the header before any key is chosen; `exp`, `iss` and
`aud` are required. Keys come only from the configured JWKS — header fields `jku`, `x5u` and
`jwk` never select a key (SECURITY: THREAT_MODEL.md, token forgery).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JOSEError, JWSError, JWTClaimsError
from jose.utils import base64url_decode

from gateway.config.model import IdentityConfig
from gateway.core.errors import AuthenticationError

log = logging.getLogger(__name__)

_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
MAX_TOKEN_BYTES = 6 * 1024  # the HTTP parser already refuses header fields over 8190 bytes


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated employee: who they are and their job functions (4.4)."""

    user: str
    roles: tuple[str, ...]
    expires_at: float
    issued_at: float = 0.0


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


class KeySet:
    """Verification keys indexed by `kid`, refreshed from the JWKS at a bounded rate.

    An unknown `kid` triggers at most one refresh per ``min_interval`` seconds, so a flood of
    tokens with random `kid`s cannot turn the gateway into a JWKS-fetching amplifier.
    """

    def __init__(
        self, fetch: JwksFetcher, min_interval: float, max_age: float, *, clock: Callable[[], float]
    ) -> None:
        self._fetch = fetch
        self._min_interval = min_interval
        self._max_age = max_age
        self._clock = clock
        self._jwks: dict[str, Mapping[str, Any]] = {}
        self._built: dict[tuple[str, str], Any] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.refreshes = 0

    @property
    def loaded(self) -> bool:
        return bool(self._jwks)

    async def refresh(self) -> None:
        data = await self._fetch()
        keys = data.get("keys") if isinstance(data, Mapping) else None
        if not isinstance(keys, list):
            raise ValueError("JWKS has no 'keys' list")
        index: dict[str, Mapping[str, Any]] = {}
        for k in keys:
            if (
                isinstance(k, Mapping)
                and isinstance(k.get("kid"), str)
                and k.get("use", "sig") == "sig"
            ):
                index[k["kid"]] = k
        self._jwks = index
        self._built = {}
        self._fetched_at = self._clock()
        self.refreshes += 1

    async def key_for(self, kid: str, alg: str) -> Any | None:
        now = self._clock()
        stale = now - self._fetched_at > self._max_age
        if (kid not in self._jwks or stale) and now - self._fetched_at >= self._min_interval:
            async with self._lock:
                if self._clock() - self._fetched_at >= self._min_interval:
                    try:
                        await self.refresh()
                    except Exception as e:  # keep the old keys; the next refresh may succeed
                        self._fetched_at = self._clock()
                        log.warning("jwks refresh failed", extra={"error": type(e).__name__})
        spec = self._jwks.get(kid)
        if spec is None:
            return None
        if spec.get("alg") not in (None, alg) or spec.get("kty") != _KTY_FOR_ALG.get(alg[:2]):
            return None
        built = self._built.get((kid, alg))
        if built is None:
            built = jwk.construct(dict(spec), alg)
            self._built[(kid, alg)] = built
        return built


class TokenVerifier:
    def __init__(
        self,
        cfg: IdentityConfig,
        keys: KeySet,
        *,
        clock: Callable[[], float] = time.time,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._keys = keys
        self._clock = clock
        self._cache: dict[str, Principal] = {}
        self._on_cache = on_cache or (lambda hit: None)
        self._options = {
            "require_exp": True,
            "require_iss": True,
            "require_aud": True,
            "require_sub": cfg.user_claim == "sub",
            "leeway": cfg.clock_skew_seconds,
            "verify_at_hash": False,
        }

    async def verify(self, raw: str) -> Principal:
        cached = self._cache.get(raw)
        if cached is not None:
            # A cached token is valid until exactly its `exp` (plus the configured skew, which
            # python-jose also allowed when it was first verified).
            if self._clock() < cached.expires_at + self._cfg.clock_skew_seconds:
                self._on_cache(True)
                return cached
            del self._cache[raw]
        self._on_cache(False)
        principal = await self._verify_uncached(raw)
        if len(self._cache) >= self._cfg.token_cache_size:
            self._evict()
        self._cache[raw] = principal
        return principal

    def _evict(self) -> None:
        now = self._clock() - self._cfg.clock_skew_seconds
        expired = [t for t, p in self._cache.items() if p.expires_at <= now]
        for t in expired:
            del self._cache[t]
        if len(self._cache) >= self._cfg.token_cache_size:  # still full: drop the oldest half
            for t in list(self._cache)[: len(self._cache) // 2]:
                del self._cache[t]

    async def verify_id_token(self, raw: str, nonce: str | None) -> Principal:
        """An OIDC ID token (OpenID Connect Core §3.1.3.7): every check of a bearer token (this
        verifier's audience is the client id), then the login's ``nonce`` (None: a token from a
        refresh, which carries none to compare) and `azp` when there are several audiences.
        Never cached: each is used once."""
        claims = await self._claims(raw)
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise AuthenticationError("nonce_mismatch")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self._cfg.audience:
            raise AuthenticationError("invalid_claims")
        return self._principal(claims)

    async def _verify_uncached(self, raw: str) -> Principal:
        return self._principal(await self._claims(raw))

    async def _claims(self, raw: str) -> Mapping[str, Any]:
        if len(raw) > MAX_TOKEN_BYTES:
            raise AuthenticationError("token_too_large")
        segments = raw.split(".")
        if len(segments) != 3:  # a JWS; a JWE (5 segments) or anything else is not accepted
            raise AuthenticationError("malformed_token")
        if not all(_canonical_base64url(s) for s in segments):
            # One token, one spelling: padding, the `+/` alphabet or non-zero trailing bits would
            # give the same token a second cache key and a second record.
            raise AuthenticationError("malformed_token")
        try:
            header = jwt.get_unverified_header(raw)
        except JOSEError as e:
            raise AuthenticationError("malformed_token") from e
        _refuse_duplicate_members(segments[0], "malformed_token")
        if "crit" in header or "enc" in header:
            # RFC 7515 §4.1.11: extensions we do not understand must not be ignored; `enc`
            # belongs to an encrypted token, which this gateway does not accept.
            raise AuthenticationError("unsupported_header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._cfg.algorithms:
            raise AuthenticationError("algorithm_not_allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthenticationError("missing_kid")
        key = await self._keys.key_for(kid, alg)
        if key is None:
            raise AuthenticationError("unknown_kid")
        try:
            claims = jwt.decode(
                raw,
                key,
                algorithms=[alg],
                audience=self._cfg.audience,
                issuer=self._cfg.issuer,
                options=self._options,
            )
        except ExpiredSignatureError as e:
            raise AuthenticationError("token_expired") from e
        except JWTClaimsError as e:
            raise AuthenticationError("invalid_claims") from e
        except JOSEError as e:
            # python-jose wraps signature failures as JWTError(JWSError); anything else is a
            # claim the token lacks or a payload that is not a claims object.
            cause = e.args[0] if e.args else None
            reason = "invalid_signature" if isinstance(cause, JWSError) else "invalid_claims"
            raise AuthenticationError(reason) from e
        # A claim given twice is read one way here and maybe another way by the IdP or an
        # upstream (RFC 7519 §4 lets a parser reject it): refuse rather than pick one.
        _refuse_duplicate_members(segments[1], "duplicate_claims")
        if not isinstance(claims, Mapping):
            raise AuthenticationError("invalid_claims")
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        user = claims.get(self._cfg.user_claim)
        if not isinstance(user, str) or not user or len(user) > 256:
            raise AuthenticationError("invalid_user_claim")
        roles: Any = claims
        for part in self._cfg.roles_claim.split("."):  # e.g. realm_access.roles
            roles = roles.get(part) if isinstance(roles, Mapping) else None
        if roles is None:
            roles = []
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise AuthenticationError("invalid_roles_claim")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthenticationError("invalid_claims")
        # RFC 7519 §4.1.4: the current time must be *before* exp. python-jose compares whole
        # seconds and still accepts a token during its expiry second; the gateway does not.
        if self._clock() >= exp + self._cfg.clock_skew_seconds:
            raise AuthenticationError("token_expired")
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else 0.0
        return Principal(
            user=user, roles=tuple(sorted(set(roles))), expires_at=float(exp), issued_at=issued
        )


_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*\Z")


def _canonical_base64url(segment: str) -> bool:
    """RFC 7515 §2: base64url without padding, and the only spelling of its bytes."""
    if not _BASE64URL.match(segment) or len(segment) % 4 == 1:
        return False
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, binascii.Error):
        return False
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") == segment


def _refuse_duplicate_members(segment: str, reason: str) -> None:
    """AuthenticationError(reason) if the base64url JSON object in ``segment`` names a member
    twice (json.loads would silently keep the last one)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        if len(names) != len(set(names)):
            raise AuthenticationError(reason)
        return dict(items)

    try:
        json.loads(base64url_decode(segment.encode("ascii")), object_pairs_hook=pairs)
    except (ValueError, UnicodeError) as e:
        raise AuthenticationError("malformed_token") from e


def file_fetcher(path: str) -> JwksFetcher:
    async def fetch() -> Mapping[str, Any]:
        with open(path, encoding="utf-8") as f:
            data: Mapping[str, Any] = json.load(f)
        return data

    return fetch


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an Authorization header (RFC 6750 §2.1)."""
    if not authorization:
        raise AuthenticationError("missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("not_bearer")
    return token.strip()


def url_fetcher(
    session: Any, url: str, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None
) -> JwksFetcher:
    """Fetch a JWKS over HTTP(S) with the given aiohttp ClientSession (``ssl_context``: a CA of
    the organisation's; default: the system's CAs)."""
    import aiohttp

    async def fetch() -> Mapping[str, Any]:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), ssl=ssl_context or True
        ) as resp:
            resp.raise_for_status()
            if resp.content_length is not None and resp.content_length > 1024 * 1024:
                raise ValueError("JWKS too large")
            data: Mapping[str, Any] = await resp.json(content_type=None)
            return data

    return fetch
