"""`pd-gateway subject request open | list | close` (6.3, 6.5, 6.6, 7.3; decision 029): the
register of data subjects' requests, a client of its admin API (gateway.web.requests_api).

The DPO types the id as the business system knows it; the gateway keeps it as a keyed hash, and
the register shows the label the DPO chose and that stored form (never the id). Opening a block,
correct or destroy request blocks the subject at once. Closing a destroy request takes the act of
destruction from a file (``--act FILE``: YAML or JSON with what, where, by, when — 7.3).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.cli import client, output, times
from gateway.cli.client import ApiError
from gateway.cli.investigate_cmd import checked_subject

TYPES = ("access", "block", "correct", "destroy", "withdraw-consent")
OUTCOMES = ("answered", "verified", "corrected", "destroyed", "processing_stopped", "refused")
LIST_TABLE = (
    ("request", "request"),
    ("type", "request_type"),
    ("label", "label"),
    ("ref", "ref"),
    ("received", "received"),
    ("due", "due"),
    ("standing", "standing"),
    ("report issued", "report_issued"),
    ("closed", "closed"),
    ("outcome", "outcome"),
    ("subject as stored", "subject"),
)


def register(ssub: Any) -> None:
    r = ssub.add_parser(
        "request", help="the register of data subjects' requests and their deadlines (6.3-7.3)"
    )
    rsub = r.add_subparsers(dest="request_command", required=True)
    o = rsub.add_parser("open", help="open a request (block, correct, destroy: blocked at once)")
    o.add_argument("--type", required=True, choices=TYPES, help="what the subject asks for")
    o.add_argument(
        "--subject", required=True, help="the subject's id, as the business system knows it"
    )
    o.add_argument("--received", required=True, help="the day the request reached you (YYYY-MM-DD)")
    o.add_argument("--ref", default="", help="your reference (the incoming letter's number)")
    o.add_argument("--label", default="", help="your name for the case (never the id)")
    o.add_argument("--reason", default="", help="a note kept with the request")
    client.connection(o)
    o.set_defaults(run=run_open)
    ls = rsub.add_parser("list", help="every request: deadline, standing, report, outcome")
    ls.add_argument("--overdue", action="store_true", help="only open requests past their deadline")
    ls.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    ls.add_argument("--tz", help="the zone of times shown (IANA name; default: this machine's)")
    client.connection(ls)
    ls.set_defaults(run=run_list)
    c = rsub.add_parser("close", help="close a request with its outcome (and the act, 7.3)")
    c.add_argument("request", help="the request's id in the register (as `request list` shows)")
    c.add_argument("--outcome", required=True, choices=OUTCOMES, help="what was done")
    c.add_argument(
        "--act", type=Path, help="the act of destruction: YAML/JSON with what, where, by, when"
    )
    c.add_argument(
        "--unblock", action="store_true", help="end the subject's block in the same step"
    )
    c.add_argument("--reason", default="", help="a note (required when the outcome is refused)")
    client.connection(c)
    c.set_defaults(run=run_close)


def _url(args: argparse.Namespace, path: str) -> str:
    return str(args.gateway).rstrip("/") + path


def read_act(path: Path) -> dict[str, Any]:
    """The act file as a mapping; ApiError naming the file (and the line) otherwise."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ApiError(f"{path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ApiError(f"{path}{line}: not YAML or JSON") from None
    if not isinstance(data, dict):
        raise ApiError(f"{path}: must be a mapping of what, where, by, when")
    for key in ("what", "where", "by", "when"):
        if not data.get(key):
            raise ApiError(f"{path}: {key}: required (what, where, by, when: 7.3)")
    return {k: str(v) for k, v in data.items()}


def run_open(args: argparse.Namespace) -> int:
    try:
        checked_subject(args.subject)
        token = client.read_token(args)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    body = {
        "type": args.type,
        "subject": args.subject,
        "received": args.received,
        "ref": args.ref,
        "label": args.label,
        "reason": args.reason,
    }
    try:
        answer = client.request(_url(args, "/admin/subject-requests"), token, body)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    r = answer["register"]
    print(
        f"request {r['request']}: {r['request_type']} opened, due {r['due']} "
        f"(audit request id {answer['request_id']})"
    )
    if answer["block"] == "blocked":
        print(f"  {args.subject}: blocked at once (block {r['block_id']})")
    elif answer["block"] == "already_blocked":
        print(f"  {args.subject}: already blocked (block {r['block_id']}); the block stays")
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        tz = times.zone(args.tz)
        token = client.read_token(args)
    except (ApiError, times.TimeError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    path = "/admin/subject-requests" + ("?overdue=1" if args.overdue else "")
    try:
        answer = client.request(_url(args, path), token)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(answer, ensure_ascii=False))
        return 0
    rows = [
        {
            **r,
            "report_issued": times.show(r["report_issued_us"], tz) if r["report_issued_us"] else "",
            "closed": times.show(r["closed_us"], tz) if r["closed_us"] else "",
            "standing": _standing(r),
        }
        for r in answer["requests"]
    ]
    c = answer["counts"]
    print(
        f"register on {answer['today']}: {c['open']} open, {c['overdue']} overdue, "
        f"{c['due_soon']} due soon (times in {times.describe(tz)})"
    )
    output.table(rows, LIST_TABLE, sys.stdout, tz)
    return 0


def _standing(r: dict[str, Any]) -> str:
    if r["standing"] == "open":
        return f"open, {r['days_left']} d left" + (" (due soon)" if r["due_soon"] else "")
    if r["standing"] == "overdue":
        return f"OVERDUE by {-r['days_left']} d"
    return "met" if r["standing"] == "met" else "MISSED"


def run_close(args: argparse.Namespace) -> int:
    try:
        token = client.read_token(args)
        act = read_act(args.act) if args.act else None
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"outcome": args.outcome, "unblock": args.unblock, "reason": args.reason}
    if act is not None:
        body["act"] = act
    try:
        answer = client.request(
            _url(args, f"/admin/subject-requests/{args.request}/close"), token, body
        )
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    r = answer["register"]
    met = "on time" if r["standing"] == "met" else "LATE (deadline missed)"
    print(
        f"request {r['request']}: closed, {r['outcome']}, {met}: due {r['due']} "
        f"(audit request id {answer['request_id']})"
    )
    if args.unblock:
        print("  the subject's block is ended")
    return 0
