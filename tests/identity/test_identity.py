"""Identity: JWTs verified against the JWKS with an allowlist; every bad token is 401, audited."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jose import jws, jwt

from tests.conftest import (
    AUDIENCE,
    ISSUER,
    KID,
    GatewayFactory,
    Gw,
    Keys,
    Upstream,
    anonymous_refusals,
    rsa_keypair,
    spool_events,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {
        "sub": "mallory",
        "roles": ["hr_officer"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    c.update(over)
    return c


def unsigned(alg: str) -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": KID}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def hs256_with_public_key(public_pem: str) -> str:
    """The classic RS→HS confusion: an HMAC 'signed' with the server's public key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = _b64(json.dumps(_claims()).encode())
    sig = hmac.new(public_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def bad_tokens(keys: Keys) -> dict[str, tuple[str, str]]:
    """name → (token, the audit reason it must produce)."""
    other_pem, other_jwk = rsa_keypair()

    def by_other(headers: dict[str, Any]) -> str:
        """Signed by a key the gateway does not trust, whatever the header claims."""
        return str(
            jwt.encode(_claims(), other_pem, algorithm="RS256", headers={"kid": KID, **headers})
        )

    now = int(time.time())
    good = keys.token("mallory", ["hr_officer"])
    header, _, sig = good.split(".")
    return {
        "expired": (
            keys.token("mallory", ["hr_officer"], exp=now - 60, iat=now - 600),
            "token_expired",
        ),
        "wrong_issuer": (
            keys.token("mallory", ["hr_officer"], iss="https://evil.invalid"),
            "invalid_claims",
        ),
        "wrong_audience": (
            keys.token("mallory", ["hr_officer"], aud="another-app"),
            "invalid_claims",
        ),
        "missing_exp": (keys.token("mallory", ["hr_officer"], exp=None), "invalid_claims"),
        "not_yet_valid": (keys.token("mallory", ["hr_officer"], nbf=now + 600), "invalid_claims"),
        "alg_none": (unsigned("none"), "algorithm_not_allowed"),
        "alg_None": (unsigned("None"), "algorithm_not_allowed"),
        "alg_NONE": (unsigned("NONE"), "algorithm_not_allowed"),
        "hs256_with_rsa_public_key": (
            hs256_with_public_key(keys.public_pem),
            "algorithm_not_allowed",
        ),
        "unknown_kid": (keys.token("mallory", ["hr_officer"], kid="rotated-away"), "unknown_kid"),
        "signed_by_another_key": (
            by_other({}),
            "invalid_signature",
        ),
        "jku_points_elsewhere": (
            by_other({"jku": "http://127.0.0.1:1/jwks.json"}),
            "invalid_signature",
        ),
        "tampered_payload": (
            f"{header}.{_b64(json.dumps(_claims(roles=['dpo'])).encode())}.{sig}",
            "invalid_signature",
        ),
        "roles_not_strings": (
            keys.token("mallory", [{"role": "hr_officer"}]),
            "invalid_roles_claim",
        ),  # type: ignore[list-item]
        "garbage": ("not.a.jwt", "malformed_token"),
        "huge": ("a" * 7000, "token_too_large"),
        "x5u_points_elsewhere": (
            by_other({"x5u": "http://127.0.0.1:1/cert.pem"}),
            "invalid_signature",
        ),
        "embedded_jwk_of_the_signer": (
            by_other({"jwk": other_jwk}),
            "invalid_signature",
        ),
        "kid_path_traversal": (
            keys.token("mallory", ["hr_officer"], kid="../../../../etc/passwd"),
            "unknown_kid",
        ),
        "kid_sql_injection": (
            keys.token("mallory", ["hr_officer"], kid="' OR '1'='1' --"),
            "unknown_kid",
        ),
        "kid_not_a_string": (keys.token("mallory", ["hr_officer"], kid=7), "missing_kid"),  # type: ignore[arg-type]
        "nested_jwe": (
            f"{_b64(json.dumps({'alg': 'RSA-OAEP', 'enc': 'A256GCM', 'kid': KID}).encode())}"
            f".{_b64(b'k' * 32)}.{_b64(b'iv')}.{_b64(good.encode())}.{_b64(b'tag')}",
            "malformed_token",
        ),
        "crit_extension": (
            keys.token("mallory", ["hr_officer"], headers={"crit": ["exp"]}),
            "unsupported_header",
        ),
        "missing_sub": (keys.token(None, ["hr_officer"]), "invalid_claims"),  # type: ignore[arg-type]
        "empty_sub": (keys.token("", ["hr_officer"]), "invalid_user_claim"),
        "missing_iss": (keys.token("mallory", ["hr_officer"], iss=None), "invalid_claims"),
        "missing_aud": (keys.token("mallory", ["hr_officer"], aud=None), "invalid_claims"),
        "roles_not_a_list": (keys.token("mallory", "hr_officer"), "invalid_roles_claim"),  # type: ignore[arg-type]
        "duplicate_claims": (
            signed_raw(
                keys,
                '{"sub": "mallory", "sub": "alice", "roles": ["hr_officer"], '
                f'"iss": "{ISSUER}", "aud": "{AUDIENCE}", "exp": {now + 300}}}',
            ),
            "duplicate_claims",
        ),
        "duplicate_header_alg": (
            ".".join((_b64(DUPLICATE_ALG.encode()), good.split(".")[1], sig)),
            "malformed_token",
        ),
    }


DUPLICATE_ALG = '{"alg": "none", "alg": "RS256", "kid": "' + KID + '"}'


def signed_raw(keys: Keys, payload: str) -> str:
    """A payload signed exactly as written (as an IdP bug could emit it) with the trusted key."""
    return str(jws.sign(payload.encode(), keys.pem, headers={"kid": KID}, algorithm="RS256"))


@pytest.fixture
def attacks(keys: Keys) -> dict[str, tuple[str, str]]:
    return bad_tokens(keys)


async def test_every_hostile_token_is_401_audited_and_says_nothing(
    gw: Gw, upstream: Upstream, attacks: dict[str, tuple[str, str]]
) -> None:
    for name, (token, _) in attacks.items():
        resp = await gw.client.get("/hr/medical/1001", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, name
        body = await resp.json()
        # No library message, no claim, no key material: only the generic fields.
        assert set(body) == {"error", "message", "request_id"}, name
        assert body["message"] == "a valid bearer token is required", name
    assert upstream.seen == []
    # No valid token, so no one to attribute them to: counted per reason in the window's
    # summaries (docs/decisions/013), every one of them, none as an access event.
    assert spool_events(gw.spool_dir) == []
    summaries = await anonymous_refusals(gw)
    counted: Counter[str] = Counter()
    for s in summaries:
        counted[s["reason"]] += s["count"]
    assert counted == Counter(reason for _, reason in attacks.values())
    assert all(s["status"] == 401 and s["route"] == "hr-medical" for s in summaries)
    # Five unknown or hostile `kid`s, yet the JWKS was read at most once more than at start.
    assert gw.metric("pdgw_jwks_refreshes") <= 2


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "token abc"])
async def test_non_bearer_authorization_is_401(gw: Gw, header: str) -> None:
    resp = await gw.client.get("/hr/employees", headers={"Authorization": header})
    assert resp.status == 401


async def test_valid_token_is_verified_once_then_served_from_cache(gw: Gw, keys: Keys) -> None:
    token = keys.token("alice", ["hr_officer"])
    for _ in range(3):
        resp = await gw.client.get(
            "/hr/employees/1001", headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200
    assert gw.metric("pdgw_token_cache_total", {"result": "miss"}) == 1
    assert gw.metric("pdgw_token_cache_total", {"result": "hit"}) == 2


async def test_cached_token_stops_working_at_its_expiry(gw: Gw, keys: Keys) -> None:
    token = keys.token("alice", ["hr_officer"], ttl=2)  # whole seconds: valid for 1-2 s
    auth = {"Authorization": f"Bearer {token}"}
    assert (await gw.client.get("/hr/employees/1001", headers=auth)).status == 200
    deadline = jwt.get_unverified_claims(token)["exp"]
    while time.time() < deadline + 0.05:
        await _sleep(0.1)
    assert (await gw.client.get("/hr/employees/1001", headers=auth)).status == 401


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0

    def app(self) -> web.Application:
        async def jwks(request: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response({"keys": self.keys})

        app = web.Application()
        app.router.add_get("/certs", jwks)
        return app


async def test_jwks_url_is_refetched_for_a_new_kid_but_at_a_bounded_rate(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    idp = JwksServer()
    idp.keys = keys.jwks()["keys"]
    server = await aiohttp_server(idp.app())
    gw = await make_gateway(
        upstream.url,
        identity={
            "jwks_file": None,
            "jwks_url": str(server.make_url("/certs")),
            "jwks_refresh_min_interval_seconds": 0.5,
        },
    )
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    assert (await gw.client.get("/hr/employees", headers=auth)).status == 200
    assert idp.fetches == 1

    # The IdP rotates to a new key: the first token with the new kid triggers one refresh.
    new_pem, new_jwk = rsa_keypair()
    idp.keys = [*idp.keys, {**new_jwk, "kid": "rotated-2"}]
    await _sleep(0.6)
    rotated = str(
        jwt.encode(
            _claims(sub="bob", roles=["accountant"]),
            new_pem,
            algorithm="RS256",
            headers={"kid": "rotated-2"},
        )
    )
    assert (
        await gw.client.get("/hr/employees", headers={"Authorization": f"Bearer {rotated}"})
    ).status == 200
    assert idp.fetches == 2

    # A flood of random kids refreshes at most once per interval, not once per token.
    forged = [keys.token("mallory", ["hr_officer"], kid=f"random-{i}") for i in range(200)]
    t0 = time.monotonic()
    for token in forged:
        assert (
            await gw.client.get("/hr/employees", headers={"Authorization": f"Bearer {token}"})
        ).status == 401
    elapsed = time.monotonic() - t0
    assert idp.fetches <= 2 + int(elapsed / 0.5) + 1
    assert idp.fetches < 20
