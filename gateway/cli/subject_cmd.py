"""`pd-gateway subject block | unblock | status | list` (6.5, 6.6): the DPO's commands, clients of
the subject-blocks API (gateway.web.blocks_api).

The DPO gives the id as the business system knows it and never has to read a hash: `status ID`
says whether it is blocked, since when, by whom and why; `list` shows the label the DPO gave each
block (a ticket, never the id: 5.3) beside the form the trail keeps, whole. Unblocking an id that
is not blocked is an error (exit 1), as is blocking one that is.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli import client, output, request_cmd, times
from gateway.cli.client import ApiError
from gateway.cli.investigate_cmd import checked_subject

LIST_TABLE = (
    ("since", "ts_us"),
    ("label", "label"),
    ("by", "actor"),
    ("reason", "reason"),
    ("subject as stored", "subject"),
)
HISTORY_TABLE = (
    ("time", "ts_us"),
    ("action", "action"),
    ("by", "actor"),
    ("label", "label"),
    ("reason", "reason"),
)


def _tz(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tz", help="the time zone of times shown (IANA name; default: this machine's zone)"
    )


def register(sub: Any) -> None:
    s = sub.add_parser(
        "subject", help="block, unblock and look up data subjects; their requests (6.3-7.3)"
    )
    ssub = s.add_subparsers(dest="subject_command", required=True)
    for action, text in (("block", "block a data subject"), ("unblock", "lift a block")):
        p = ssub.add_parser(action, help=text)
        p.add_argument("subject", help="the data subject's id, as the business system knows it")
        p.add_argument("--reason", required=True, help="why: the subject's request, a ticket")
        if action == "block":
            p.add_argument(
                "--label",
                default="",
                help="your name for the case, shown by `subject list` (a ticket; never the id)",
            )
        client.connection(p)
        p.set_defaults(run=run_block, action=action)
    st = ssub.add_parser("status", help="is this subject blocked: since when, by whom, why")
    st.add_argument("subject", help="the data subject's id, as the business system knows it")
    client.connection(st)
    st.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    _tz(st)
    st.set_defaults(run=run_status)
    ls = ssub.add_parser("list", help="subjects blocked now, with their labels")
    client.connection(ls)
    ls.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    _tz(ls)
    ls.set_defaults(run=run_list)
    request_cmd.register(ssub)


def _url(args: argparse.Namespace, path: str) -> str:
    return str(args.gateway).rstrip("/") + path


def run_block(args: argparse.Namespace) -> int:
    try:
        checked_subject(args.subject)
        token = client.read_token(args)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    body = {"subject": args.subject, "action": args.action, "reason": args.reason}
    if args.action == "block":
        body["label"] = args.label
    try:
        answer = client.request(_url(args, "/admin/subject-blocks"), token, body)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.subject}: {answer['result']} (record {answer['block_id']}, "
        f"request {answer['request_id']})"
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    try:
        tz = times.zone(args.tz)
        checked_subject(args.subject)
        token = client.read_token(args)
    except (ApiError, times.TimeError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    try:
        answer = client.request(
            _url(args, "/admin/subject-blocks/status"), token, {"subject": args.subject}
        )
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"subject": args.subject, **answer}, ensure_ascii=False, indent=2))
        return 0
    block = answer["block"]
    zone = times.describe(tz)
    if block is None:
        print(f"{args.subject}: not blocked")
    else:
        print(
            f"{args.subject}: BLOCKED since {times.show(block['ts_us'], tz)} ({zone}) "
            f"by {block['actor']}"
        )
        print(f"  reason: {block['reason']}")
        print(f"  label:  {block['label'] or '-'}")
    print(f"  stored in the trail as {answer['stored']}")
    if answer["history"]:
        print(f"history (times in {zone}):")
        output.table(answer["history"], HISTORY_TABLE, sys.stdout, tz)
    print(
        f"(this gateway's view is {answer['view_age_seconds']:.1f} s old; "
        f"request {answer['request_id']})",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        tz = times.zone(args.tz)
        token = client.read_token(args)
    except (ApiError, times.TimeError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    try:
        answer = client.request(_url(args, "/admin/subject-blocks"), token)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(answer, ensure_ascii=False))
        return 0
    print(f"times in {times.describe(tz)}")
    output.table(answer["blocks"], LIST_TABLE, sys.stdout, tz)
    print(f"(this gateway's view is {answer['view_age_seconds']:.1f} s old)", file=sys.stderr)
    return 0
