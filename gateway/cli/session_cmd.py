"""`pd-gateway session revoke USER --reason R`, `pd-gateway session keygen --out FILE`.

`revoke` asks a running gateway (the admin API, `POST /admin/sessions/revoke`) to end every
browser session of a user: the change of access rights is recorded in the trail at once
(`sessions_revoked`, 9.2.7) and written to the shared revocation list, which every replica
reads within `oidc.session.revocation_poll_seconds` (docs/decisions/014-browser-sessions.md).
Allowed to the job functions in `authz.policy_admin_roles`. When the user's next request comes
with the old cookie, the refusal is an `auth_event` `revoked` too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from gateway.cli import client
from gateway.cli.client import ApiError


def register(sub: Any) -> None:
    s = sub.add_parser("session", help="browser sessions: revoke a user's, make a cookie key")
    ssub = s.add_subparsers(dest="session_command", required=True)
    r = ssub.add_parser("revoke", help="end every browser session of a user, on every replica")
    r.add_argument("user", help="the employee's user id (the identity's user claim)")
    r.add_argument("--reason", required=True, help="why (a ticket, an incident): in the trail")
    client.connection(r)
    r.set_defaults(run=run_revoke)
    k = ssub.add_parser("keygen", help="write a new session cookie key (Fernet), mode 0600")
    k.add_argument("--out", required=True, help="the key file to create (must not exist)")
    k.set_defaults(run=run_keygen)


def run_revoke(args: argparse.Namespace) -> int:
    try:
        token = client.read_token(args)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    body = {"user": args.user, "reason": args.reason}
    try:
        answer = client.request(args.gateway.rstrip("/") + "/admin/sessions/revoke", token, body)
    except ApiError as e:
        print(f"pd-gateway: {e}; the sessions were not revoked", file=sys.stderr)
        return 1
    print(
        f"revoked every session of {args.user} begun before now: here at once, on every other "
        f"gateway within {answer['bound_seconds']:g} s (recorded as change "
        f"{answer['change_id']}, request {answer['request_id']})"
    )
    return 0


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
