"""The gateway as an OpenID Connect confidential client: discovery, authorization code with PKCE,
refresh, RP-initiated logout (decision 014).

Contract: ``OidcClient.discover()`` reads the issuer's discovery document (its `issuer` must be
the configured one, character for character) and builds the ID-token verifier from
``identity.TokenVerifier`` and ``identity.KeySet`` — the same algorithm allowlist, expiry, clock
skew, claim rules and rate-limited JWKS rotation as bearer tokens, with the client id as the
audience. ``exchange`` and ``refresh`` return a ``TokenSet`` or raise ``AuthenticationError``
with a short machine reason; a provider's own error text is never kept, logged or shown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import aiohttp

from gateway.config.model import IdentityConfig, OidcConfig
from gateway.core.errors import AuthenticationError
from gateway.identity.tokens import KeySet, Principal, TokenVerifier, url_fetcher

log = logging.getLogger(__name__)

_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_PROVIDER_RESPONSE = 256 * 1024


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


@dataclass(frozen=True, slots=True)
class TokenSet:
    principal: Principal
    refresh_token: str


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _same_scheme_rule(issuer: str, url: str) -> bool:
    """Endpoints are https, or http on the issuer's own loopback host (the demo and tests)."""
    u, i = urlsplit(url), urlsplit(issuer)
    if u.scheme == "https":
        return True
    return u.scheme == "http" and i.scheme == "http" and u.netloc == i.netloc


class OidcClient:
    def __init__(
        self,
        cfg: OidcConfig,
        identity: IdentityConfig,
        http: aiohttp.ClientSession,
        *,
        ssl_context: ssl.SSLContext | None,
        clock: Callable[[], float],
    ) -> None:
        self._cfg = cfg
        self._identity = identity
        self._http = http
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self._clock = clock
        self.metadata: ProviderMetadata | None = None
        self.keys: KeySet | None = None
        self._verifier: TokenVerifier | None = None

    @property
    def ready(self) -> bool:
        return self._verifier is not None

    async def discover(self) -> None:
        url = self._cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._get_json(url)
        meta = _metadata(doc)
        if meta.issuer != self._cfg.issuer:  # OpenID Connect Discovery §4.3
            raise ValueError("discovery issuer differs from the configured issuer")
        for endpoint in (meta.authorization_endpoint, meta.token_endpoint, meta.jwks_uri):
            if not _same_scheme_rule(meta.issuer, endpoint):
                raise ValueError("provider endpoint is not https")
        keys = KeySet(
            url_fetcher(
                self._http,
                meta.jwks_uri,
                ssl_context=self._ssl if isinstance(self._ssl, ssl.SSLContext) else None,
            ),
            self._identity.jwks_refresh_min_interval_seconds,
            self._identity.jwks_cache_seconds,
            clock=self._clock,
        )
        await keys.refresh()
        # The same verifier class and rules as bearer tokens; only issuer and audience differ.
        id_cfg = replace(self._identity, issuer=meta.issuer, audience=self._cfg.client_id)
        self.metadata, self.keys = meta, keys
        self._verifier = TokenVerifier(id_cfg, keys, clock=self._clock)

    async def ensure_ready(self) -> ProviderMetadata:
        if self.metadata is None:
            try:
                await self.discover()
            except Exception as e:
                log.warning("OIDC discovery failed", extra={"error": type(e).__name__})
                raise AuthenticationError("provider_unavailable") from None
        assert self.metadata is not None
        return self.metadata

    def authorize_url(
        self,
        state: str,
        nonce: str,
        code_verifier: str,
        *,
        silent: bool = False,
        reauthenticate: bool = False,
    ) -> str:
        """The provider's authorization URL (OIDC Core §3.1.2.1). ``silent``: `prompt=none`, a
        re-login that shows nothing or fails; ``reauthenticate``: `prompt=login`, the person
        proves who they are again even if the provider has a session; `prompt=consent` when
        `offline_access` is asked for and oidc.consent_for_offline_access is on (§11: the only
        way such providers issue a refresh token)."""
        assert self.metadata is not None
        prompts = []
        if silent:
            prompts = ["none"]
        else:
            if reauthenticate:
                prompts.append("login")
            if self._cfg.consent_for_offline_access and "offline_access" in self._cfg.scopes:
                prompts.append("consent")
        prompt = {"prompt": " ".join(prompts)} if prompts else {}
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._cfg.client_id,
                "redirect_uri": self._cfg.redirect_uri,
                "scope": " ".join(self._cfg.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(code_verifier),
                "code_challenge_method": "S256",
                **prompt,
            }
        )
        return f"{self.metadata.authorization_endpoint}?{query}"

    def end_session_url(self, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2), if offered."""
        if self.metadata is None or self.metadata.end_session_endpoint is None:
            return None
        query = urlencode(
            {"client_id": self._cfg.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        )
        return f"{self.metadata.end_session_endpoint}?{query}"

    async def exchange(self, code: str, code_verifier: str, nonce: str) -> TokenSet:
        tokens = await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self._cfg.redirect_uri,
                "code_verifier": code_verifier,
            },
            "code_exchange_failed",
        )
        return await self._token_set(tokens, nonce, refresh_token="")

    async def refresh(self, refresh_token: str) -> TokenSet:
        tokens = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, "refresh_failed"
        )
        return await self._token_set(tokens, None, refresh_token=refresh_token)

    async def _token_set(
        self, tokens: Mapping[str, Any], nonce: str | None, *, refresh_token: str
    ) -> TokenSet:
        assert self._verifier is not None
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise AuthenticationError("no_id_token")
        principal = await self._verifier.verify_id_token(id_token, nonce)
        new_refresh = tokens.get("refresh_token")
        return TokenSet(principal, new_refresh if isinstance(new_refresh, str) else refresh_token)

    async def _token_request(self, form: dict[str, str], reason: str) -> Mapping[str, Any]:
        meta = await self.ensure_ready()
        try:
            async with self._http.post(
                meta.token_endpoint,
                data=form,
                headers={"Authorization": self._basic_auth()},
                timeout=_TIMEOUT,
                ssl=self._ssl,
            ) as resp:
                if resp.status != 200:
                    raise AuthenticationError(reason)  # the provider's error text is not kept
                body = await resp.content.read(MAX_PROVIDER_RESPONSE + 1)
        except (TimeoutError, aiohttp.ClientError) as e:
            log.warning("OIDC token endpoint unreachable", extra={"error": type(e).__name__})
            raise AuthenticationError("provider_unavailable") from None
        try:
            data = _json_object(body)
        except ValueError:
            raise AuthenticationError(reason) from None
        return data

    def _basic_auth(self) -> str:
        """client_secret_basic (RFC 6749 §2.3.1): id and secret form-encoded, then Base64."""
        pair = f"{quote_plus(self._cfg.client_id)}:{quote_plus(self._cfg.client_secret.reveal())}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        async with self._http.get(url, timeout=_TIMEOUT, ssl=self._ssl) as resp:
            resp.raise_for_status()
            return _json_object(await resp.content.read(MAX_PROVIDER_RESPONSE + 1))


def _json_object(body: bytes) -> Mapping[str, Any]:
    if len(body) > MAX_PROVIDER_RESPONSE:
        raise ValueError("provider response too large")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("provider response is not an object")
    return data


def _metadata(doc: Mapping[str, Any]) -> ProviderMetadata:
    def text(name: str, required: bool = True) -> Any:
        value = doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f"discovery document lacks {name}")
        return value

    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise ValueError("provider does not support PKCE S256")
    return ProviderMetadata(
        issuer=text("issuer"),
        authorization_endpoint=text("authorization_endpoint"),
        token_endpoint=text("token_endpoint"),
        jwks_uri=text("jwks_uri"),
        end_session_endpoint=text("end_session_endpoint", required=False),
    )
