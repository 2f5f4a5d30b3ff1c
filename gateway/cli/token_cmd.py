"""`pd-gateway token --sub alice --roles hr_officer --config FILE`: a demo token.

Refuses any config not marked `demo: true`: the demo signing key is public in the repository
and must never sign a token a real deployment would accept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from jose import jwt

from gateway.config.load import load_config
from gateway.config.model import Config


def register(sub: Any) -> None:
    t = sub.add_parser("token", help="mint a demo token (demo configs only)")
    t.add_argument("--sub", required=True, help="the employee's user id")
    t.add_argument("--roles", default="", help="comma-separated job functions")
    t.add_argument("--config", required=True, help="a demo gateway config (demo: true)")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    t.set_defaults(run=run)


def mint(cfg: Config, sub: str, roles: list[str], ttl: int, now: float | None = None) -> str:
    ident = cfg.identity
    if not cfg.demo or ident.demo_signing_key_file is None or ident.jwks_file is None:
        raise ValueError("not a demo config: set demo: true and identity.demo_signing_key_file")
    pem = ident.demo_signing_key_file.read_text()
    jwks = json.loads(ident.jwks_file.read_text())
    kid = jwks["keys"][0]["kid"]
    alg = ident.algorithms[0]
    iat = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "iss": ident.issuer,
        "aud": ident.audience,
        "iat": iat,
        "exp": iat + ttl,
    }
    target: dict[str, Any] = claims
    *parents, leaf = ident.roles_claim.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = roles
    token: str = jwt.encode(claims, pem, algorithm=alg, headers={"kid": kid})
    return token


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    try:
        print(mint(cfg, args.sub, roles, args.ttl))
    except ValueError as e:
        print(f"pd-gateway: {args.config}: {e}", file=sys.stderr)
        return 2
    return 0
