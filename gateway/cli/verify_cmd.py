"""`pd-gateway audit verify` and `pd-gateway audit keygen`: tamper evidence of the audit trail
(docs/decisions/012-hash-chain.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.audit import checkpoint
from gateway.audit.checkpoint import Checkpoint
from gateway.audit.store.base import StoreError
from gateway.audit.store.factory import open_store
from gateway.audit.verify import Report, verify_store
from gateway.cli import times
from gateway.cli.store_cmd import store_config


def register(audit_sub: Any) -> None:
    v = audit_sub.add_parser(
        "verify",
        help="recompute the audit chains in the store and check them against signed checkpoints",
    )
    v.add_argument("--config", required=True, help="gateway config whose `store` section is read")
    v.add_argument(
        "--public-key",
        action="append",
        required=True,
        type=Path,
        help="checkpoint public key (PEM); repeat for keys in rotation",
    )
    v.add_argument("--instance", action="append", help="only this gateway instance (repeatable)")
    v.add_argument(
        "--since",
        help=f"start at the newest signed checkpoint before this time: {times.FORMS}",
    )
    v.add_argument("--tz", help="the zone of a --since given without one (default: this machine's)")
    v.add_argument(
        "--gateway",
        action="append",
        default=[],
        help="a running gateway's admin URL: the live signed heads of all its chains (the "
        "supervisor's and each worker's) detect truncation",
    )
    v.add_argument("--json", action="store_true", help="the report as JSON")
    v.set_defaults(run=run_verify)

    k = audit_sub.add_parser("keygen", help="make an Ed25519 key pair for chain checkpoints")
    k.add_argument("--private", required=True, type=Path, help="private key file (mode 0600)")
    k.add_argument("--public", required=True, type=Path, help="public key file for verifiers")
    k.set_defaults(run=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    try:
        kid = checkpoint.generate(args.private, args.public)
    except FileExistsError:
        print(f"pd-gateway: {args.private}: exists; not overwritten", file=sys.stderr)
        return 1
    print(f"key {kid}: private {args.private}, public {args.public}")
    return 0


def _live(url: str) -> list[Checkpoint]:
    """A running gateway's live signed heads: every chain's from its admin URL (`/checkpoints`:
    the supervisor's and each worker's, decision 030), or the one chain of a URL that names a
    worker (`ADMIN/workers/w0`) or serves only `/checkpoint`. A chain the gateway has no head of
    now is named on stderr: it is checked against the store alone."""
    base = url.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/checkpoints", timeout=10) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code != 404:
            raise
    else:
        if not isinstance(data, dict) or not isinstance(data.get("heads"), list):
            raise ValueError(f"{base}/checkpoints: not a list of heads")
        for name in data.get("unavailable") or []:
            print(
                f"pd-gateway: {base}: no live head of {name} now (starting, or not answering): "
                "its chain is checked against the store alone",
                file=sys.stderr,
            )
        return [Checkpoint.from_mapping(m) for m in data["heads"]]
    with urllib.request.urlopen(base + "/checkpoint", timeout=10) as resp:
        return [Checkpoint.from_mapping(json.load(resp))]


def run_verify(args: argparse.Namespace) -> int:
    store_cfg = store_config(args.config)
    try:
        keys = checkpoint.load_public_keys(args.public_key)
    except (OSError, ValueError) as e:
        print(f"pd-gateway: public key: {e}", file=sys.stderr)
        return 2
    since_us = None
    if args.since:
        try:
            when = times.parse_when(args.since, times.zone(args.tz), dt.datetime.now(dt.UTC))
        except times.TimeError as e:
            print(f"pd-gateway: --since {e}", file=sys.stderr)
            return 2
        since_us = int(when.timestamp() * 1e6)
    try:
        live = [cp for url in args.gateway for cp in _live(url)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"pd-gateway: cannot read a live checkpoint: {e}", file=sys.stderr)
        return 2
    try:
        store = open_store(store_cfg, apply_schema=False)
        report = verify_store(store, keys, only=args.instance, since_us=since_us, live=live)
        store.close()
    except StoreError as e:
        print(f"pd-gateway: audit store: {e}", file=sys.stderr)
        return 2
    _print(report, as_json=args.json)
    return 0 if report.ok else 1


def _print(report: Report, *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "instances": [vars(i) for i in report.instances],
                    "problems": [vars(p) for p in report.problems],
                },
                indent=2,
            )
        )
        return
    for i in report.instances:
        anchor = "" if i.anchored else " (first record not anchored to a checkpoint)"
        print(
            f"{i.instance}: records #{i.first_seq}-#{i.last_seq} ({i.records} checked), "
            f"{i.checkpoints} signed checkpoints{anchor}"
        )
    for p in report.problems:
        print(f"PROBLEM {p}")
    print("chain intact" if report.ok else f"{len(report.problems)} problems found")
