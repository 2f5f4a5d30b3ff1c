"""The `authz` section: the Casbin model and policy files, the decision cache, the policy API."""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import AuthzConfig
from gateway.config.reader import Section, non_negative, positive

D = AuthzConfig  # the defaults


def parse_authz(top: Section) -> AuthzConfig:
    az = top.section("authz")
    authz = AuthzConfig(
        model=az.file("model", az.path_of("model")) or Path(),
        policy=az.file("policy", az.path_of("policy")) or Path(),
        decision_cache_size=az.get("decision_cache_size", int, D.decision_cache_size, positive),
        watch_interval_seconds=az.get(
            "watch_interval_seconds", float, D.watch_interval_seconds, non_negative
        ),
        policy_admin_roles=tuple(str(r) for r in az.get("policy_admin_roles", list, [])),
    )
    az.finish()
    return authz
