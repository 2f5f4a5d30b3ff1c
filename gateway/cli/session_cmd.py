"""`pd-gateway session revoke USER --config FILE`, `pd-gateway session keygen --out FILE`.

`revoke` ends every browser session of a user on every replica that shares
`oidc.session.revocation_file`, within `oidc.session.revocation_poll_seconds`
(docs/decisions/014-browser-sessions.md). The gateway records the ending (an `auth_event`
`revoked`) when the user's next request arrives with the old cookie.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from gateway.config.load import load_config
from gateway.identity.sessions import append_revocation


def register(sub: Any) -> None:
    s = sub.add_parser("session", help="browser sessions: revoke a user's, make a cookie key")
    ssub = s.add_subparsers(dest="session_command", required=True)
    r = ssub.add_parser("revoke", help="end every browser session of a user, on every replica")
    r.add_argument("user", help="the employee's user id (the identity's user claim)")
    r.add_argument("--config", required=True, help="the gateway config (its oidc section)")
    r.add_argument("--reason", default="operator", help="why, for the revocation list")
    r.set_defaults(run=run_revoke)
    k = ssub.add_parser("keygen", help="write a new session cookie key (Fernet), mode 0600")
    k.add_argument("--out", required=True, help="the key file to create (must not exist)")
    k.set_defaults(run=run_keygen)


def run_revoke(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg.oidc is None:
        print(f"pd-gateway: {args.config}: no oidc section: no browser sessions", file=sys.stderr)
        return 2
    path = cfg.oidc.session.revocation_file
    append_revocation(path, args.user, time.time(), args.reason, actor=f"cli:{_operator()}")
    print(
        f"revoked every session of {args.user} begun before now; every gateway sharing {path} "
        f"refuses them within {cfg.oidc.session.revocation_poll_seconds:g} s"
    )
    return 0


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


def run_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"pd-gateway: {out} exists; not overwriting a key", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key() + b"\n")
    print(f"wrote {out} (keep it secret; every replica needs the same key)")
    return 0
