"""The `identity` section: how bearer tokens are verified (no silent defaults for security)."""

from __future__ import annotations

from gateway.config.model import ASYMMETRIC_ALGORITHMS, IdentityConfig
from gateway.config.reader import Section, http_url, non_negative, positive
from gateway.core import tls

D = IdentityConfig  # the defaults


def parse_identity(top: Section, demo: bool) -> IdentityConfig:
    ident = top.section("identity")
    problems = ident.problems
    algorithms = ident.get("algorithms", list)
    if algorithms is not None:
        if not algorithms:
            problems.add(ident.key("algorithms"), "must name at least one algorithm")
        for i, alg in enumerate(algorithms):
            if alg not in ASYMMETRIC_ALGORITHMS:
                problems.add(
                    f"{ident.key('algorithms')}.{i}",
                    f"{alg!r} is not allowed; use one of {', '.join(ASYMMETRIC_ALGORITHMS)}",
                )
    jwks_url = ident.get("jwks_url", str, None, http_url)
    jwks_ca_file = ident.file("jwks_ca_file", ident.path_of("jwks_ca_file", None))
    if jwks_ca_file is not None and jwks_ca_file.is_file():
        ident.check_tls("jwks_ca_file", lambda: tls.client_context(jwks_ca_file))
    jwks_file = ident.get("jwks_file", str, None)
    if (jwks_url is None) == (jwks_file is None):
        problems.add(ident.key("jwks_url"), "give exactly one of jwks_url or jwks_file")
    identity = IdentityConfig(
        issuer=ident.get("issuer", str),
        audience=ident.get("audience", str),
        algorithms=tuple(algorithms or ()),
        jwks_url=jwks_url,
        jwks_file=ident.file("jwks_file", ident.resolve(jwks_file)),
        clock_skew_seconds=ident.get("clock_skew_seconds", int, D.clock_skew_seconds, non_negative),
        user_claim=ident.get("user_claim", str, D.user_claim),
        roles_claim=ident.get("roles_claim", str, D.roles_claim),
        jwks_refresh_min_interval_seconds=ident.get(
            "jwks_refresh_min_interval_seconds",
            float,
            D.jwks_refresh_min_interval_seconds,
            positive,
        ),
        jwks_cache_seconds=ident.get("jwks_cache_seconds", float, D.jwks_cache_seconds, positive),
        token_cache_size=ident.get("token_cache_size", int, D.token_cache_size, positive),
        demo_signing_key_file=ident.file(
            "demo_signing_key_file", ident.path_of("demo_signing_key_file", None)
        ),
        jwks_ca_file=jwks_ca_file,
    )
    if identity.demo_signing_key_file is not None and not demo:
        problems.add(
            ident.key("demo_signing_key_file"), "only allowed in a config marked demo: true"
        )
    ident.finish()
    return identity
