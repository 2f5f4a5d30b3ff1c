"""`pd-gateway audit tail --spool DIR [--json] [-n N]`: the newest audited accesses in a spool."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.events import join
from gateway.audit.segments import BadLine, gateway_chains, read_records
from gateway.cli import times


def register(sub: Any) -> Any:
    """Add `audit` and return its subcommand set (replay is added by store_cmd)."""
    a = sub.add_parser("audit", help="audit trail commands")
    asub = a.add_subparsers(dest="audit_command", required=True)
    t = asub.add_parser(
        "tail", help="show the newest events of a spool directory (every chain in it)"
    )
    t.add_argument(
        "--spool",
        required=True,
        help="the gateway's audit.spool_dir: the supervisor's chain and each worker's (w<i>)",
    )
    t.add_argument("-n", type=int, default=20, help="how many events (0 = all)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    # The same filters as `audit search` (equality on the access record's field).
    for name in TAIL_FILTERS:
        t.add_argument(
            f"--{name.replace('_', '-')}", dest=name, help=f"only events with this {name}"
        )
    t.add_argument("--role", help="only events by an employee holding this job function")
    t.add_argument("--since", help=f"only events at or after this time: {times.FORMS}")
    t.add_argument("--until", help="only events before this time; the same forms as --since")
    t.add_argument(
        "--tz", help="the zone of --since/--until given without one (default: this machine's)"
    )
    t.set_defaults(run=run_tail)
    return asub


TAIL_FILTERS = ("user", "system", "category", "action", "decision", "status", "reason")


def _us(value: str, tz: Any) -> int:
    t = times.parse_when(value, tz, datetime.now(UTC))
    return int(t.timestamp() * 1_000_000)


def _matches(args: argparse.Namespace) -> Any:
    equals = {n: getattr(args, n) for n in TAIL_FILTERS if getattr(args, n, None) is not None}
    tz = times.zone(args.tz)
    since = _us(args.since, tz) if getattr(args, "since", None) else None
    until = _us(args.until, tz) if getattr(args, "until", None) else None
    role = getattr(args, "role", None)

    def keep(ev: dict[str, Any]) -> bool:
        if not (equals or since or until or role):
            return True
        if ev.get("kind") != "access":
            return False
        if any(str(ev.get(k)) != v for k, v in equals.items()):
            return False
        if role is not None and role not in ev.get("roles", ()):
            return False
        ts = int(ev.get("ts_us", 0))
        return (since is None or ts >= since) and (until is None or ts < until)

    return keep


def run_tail(args: argparse.Namespace) -> int:
    directory = Path(args.spool)
    if not directory.is_dir():
        print(f"pd-gateway: {directory}: no such spool directory", file=sys.stderr)
        return 2

    def bad(b: BadLine) -> None:
        print(f"pd-gateway: {b.segment}:{b.line}: {b.problem}", file=sys.stderr)

    try:
        keep = _matches(args)
    except times.TimeError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    chains = gateway_chains(directory)
    events: Iterable[dict[str, Any]]
    if len(chains) == 1:
        events = filter(keep, join(read_records(directory, on_bad=bad)))
    else:  # a gateway's: every chain, each record named by its chain, in the order of time
        events = sorted(
            (
                {"chain": name or "supervisor", **ev}
                for name, path in chains
                for ev in join(read_records(path, on_bad=bad))
                if keep(ev)
            ),
            key=_when,
        )
    shown = collections.deque(events, maxlen=args.n) if args.n > 0 else list(events)
    for ev in shown:
        if args.json:
            print(json.dumps(ev, ensure_ascii=False))
        else:
            print(_line(ev))
    return 0


def _when(ev: dict[str, Any]) -> int:
    return int(ev.get("ts_us") or ev.get("window_start_us") or 0)


def _ts(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _number(ev: dict[str, Any]) -> str:
    """``#12``; of a gateway's several chains, the chain's too: ``w0#12``, ``supervisor#3``."""
    return f"{ev.get('chain', '')}#{ev.get('seq')}"


def _line(ev: dict[str, Any]) -> str:
    kind = ev.get("kind")
    if kind == "outcome":
        eid, status, outcome = ev.get("event_id"), ev.get("status"), ev.get("outcome")
        return f"(outcome of earlier event {eid}: {status} {outcome})"
    if kind == "refusal_summary":
        return (
            f"{_ts(ev['window_start_us'])} {_number(ev)} {ev['count']} refused {ev['status']} "
            f"without a valid token: route={ev['route']} reason={ev['reason']} "
            f"from={ev['client_ip']} until {_ts(ev['window_end_us'])} "
            f"samples={','.join(ev['sample_request_ids'])}"
        )
    if kind == "permission_change":
        return (
            f"{_ts(ev['ts_us'])} {_number(ev)} CHANGE {ev['change_kind']} by {ev['actor']} "
            f"({ev['source']}): -[{ev['rule_before']}] +[{ev['rule_after']}] reason={ev['reason']}"
        )
    if kind == "auth_event":
        return (
            f"{_ts(ev['ts_us'])} {_number(ev)} SESSION {ev['event']} user={ev['user'] or '-'} "
            f"roles={','.join(ev['roles']) or '-'} reason={ev['reason'] or '-'} "
            f"session={ev['session'] or '-'} req={ev['request_id']}"
        )
    if kind == "subject_block":
        return (
            f"{_ts(ev['ts_us'])} {_number(ev)} SUBJECT {ev['action']} {ev['subject']} "
            f"label={ev.get('label') or '-'} by {ev['actor']} reason={ev['reason']} "
            f"req={ev['request_id']}"
        )
    if kind == "anomaly_review":
        return (
            f"{_ts(ev['ts_us'])} {_number(ev)} REVIEW anomaly={ev['anomaly_id']} {ev['state']} "
            f"by {ev['actor']}: {ev['comment']} req={ev['request_id']}"
        )
    if kind == "subject_request":
        return (
            f"{_ts(ev['ts_us'])} {_number(ev)} REQUEST {ev['request']} {ev['state']} "
            f"{ev['request_type']} {ev['subject']} label={ev['label'] or '-'} "
            f"received={ev['received']} due={ev['due']} outcome={ev['outcome'] or '-'} "
            f"by {ev['actor']} req={ev['request_id']}"
        )
    if kind != "access":  # a kind this version does not know how to print
        return json.dumps(ev, ensure_ascii=False)
    ts = _ts(ev["ts_us"])
    subjects = ",".join(ev.get("subject_ids") or []) or "-"
    return (
        f"{ts} {_number(ev)} {ev['decision'].upper():5} {ev['status']} {ev['outcome']:<9} "
        f"user={ev['user'] or '-'} roles={','.join(ev['roles']) or '-'} "
        f"{ev['method']} {ev['path']} {ev['system']}/{ev['category']}:{ev['action']} "
        f"subjects={subjects} reason={ev['reason']} rule=[{ev['rule']}] req={ev['request_id']}"
    )
