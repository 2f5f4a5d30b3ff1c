"""`pd-gateway audit who-accessed | activity | search | export | permissions | subject-report`:
clients of the admin port's audit query API (gateway.web.audit_api), so they work while the
gateway owns the embedded store.

Times: `--since`/`--until` take ISO 8601 (a zone, or read in `--tz`), dates and times ago
(`7d`, `24h`), never a bare number (gateway.cli.times); tables show times in `--tz` (default:
this machine's zone), named in the line above the table. Output: `--format table|json|ndjson|csv`
(`json` is one array; `ndjson` one object a line, for streams); `-o FILE` is written whole or not
at all (gateway.cli.output).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.parse
from typing import Any

from gateway.cli import client, output, times
from gateway.cli.client import ApiError
from gateway.governance.subject_hash import subject_problem

EVENT_TABLE = (
    ("time", "ts_us"),
    ("user", "user"),
    ("job functions", "roles"),
    ("system", "system"),
    ("category", "category"),
    ("purpose", "purpose"),
    ("action", "action"),
    ("decision", "decision"),
    ("status", "status"),
    ("reason", "reason"),
    ("rule", "rule"),
    ("subjects", "subject_ids"),
    ("listed", "response_count"),
    ("request id", "request_id"),
)
# One subject's events: the subject is the one asked about; what matters is who, where, why.
SUBJECT_TABLE = (
    ("time", "ts_us"),
    ("user", "user"),
    ("job functions", "roles"),
    ("system", "system"),
    ("route", "route"),
    ("category", "category"),
    ("purpose", "purpose"),
    ("action", "action"),
    ("decision", "decision"),
    ("status", "status"),
    ("reason", "reason"),
    ("listed", "response_count"),
    ("request id", "request_id"),
)
PERMISSION_TABLE = (
    ("time", "ts_us"),
    ("actor", "actor"),
    ("kind", "kind"),
    ("role", "role"),
    ("user", "user"),
    ("before", "rule_before"),
    ("after", "rule_after"),
    ("reason", "reason"),
    ("source", "source"),
)
FILTERS = ("user", "role", "system", "category", "action", "decision", "status", "reason")


def period(p: argparse.ArgumentParser) -> None:
    """`--since`, `--until` and `--tz` (also the report's)."""
    p.add_argument("--since", help=f"from this time: {times.FORMS}")
    p.add_argument("--until", help="up to this time (exclusive); the same forms as --since")
    p.add_argument(
        "--tz",
        help="the time zone of times shown and of times given without one (an IANA name such "
        "as Europe/Moscow; default: this machine's zone)",
    )


def _common(
    p: argparse.ArgumentParser, *, formats: tuple[str, ...] = ("table", "json", "ndjson", "csv")
) -> None:
    client.connection(p)
    p.add_argument(
        "--format",
        choices=formats,
        default=formats[0],
        help="output: a table, one JSON array, NDJSON (one object a line) or CSV",
    )
    period(p)
    p.add_argument("--limit", type=int, help="at most this many rows (the server caps it too)")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="the employee (token subject)")
    p.add_argument("--role", help="a job function the employee held")
    p.add_argument("--system", help="hr, crm, site, audit, …")
    p.add_argument("--category", help="personal-data category (audit_log: reads of the trail)")
    p.add_argument("--action", help="read, create, update, delete, export, block")
    p.add_argument("--decision", choices=("allow", "deny"), help="allowed or refused")
    p.add_argument("--status", type=int, help="HTTP status")
    p.add_argument("--reason", help="rule, no_matching_rule, no_route, break_glass, …")
    p.add_argument(
        "--break-glass",
        choices=("true", "false"),
        dest="break_glass",
        help="only accesses allowed by (true) or not by (false) a break-glass session",
    )


def register(audit_sub: Any) -> None:
    w = audit_sub.add_parser("who-accessed", help="every access to one data subject (6.1.1)")
    w.add_argument("subject", help="the data subject's id, as the business system knows it")
    w.add_argument(
        "--consultations",
        action="store_true",
        help="instead: who consulted the audit trail about this subject (9.2.6)",
    )
    _common(w)
    w.set_defaults(run=run_query, endpoint="subject", table=SUBJECT_TABLE)
    a = audit_sub.add_parser("activity", help="everything one employee did, refusals included")
    a.add_argument("user", help="the employee (token subject)")
    _common(a)
    a.set_defaults(run=run_query, endpoint="events", table=EVENT_TABLE)
    s = audit_sub.add_parser("search", help="access events by filters")
    _common(s)
    _filters(s)
    s.set_defaults(run=run_query, endpoint="events", table=EVENT_TABLE)
    e = audit_sub.add_parser("export", help="access events by filters, streamed (for a regulator)")
    _common(e, formats=("csv", "json", "ndjson"))
    _filters(e)
    e.add_argument(
        "--output", "-o", help="write here (whole, or not at all) instead of standard output"
    )
    e.set_defaults(run=run_query, endpoint="export", table=EVENT_TABLE)
    pm = audit_sub.add_parser("permissions", help="changes of access rights (9.2.7)")
    _common(pm)
    pm.add_argument("--user", help="changes for or by this employee")
    pm.set_defaults(run=run_query, endpoint="permissions", table=PERMISSION_TABLE)


def when(args: argparse.Namespace, tz: dt.tzinfo) -> dict[str, str]:
    """``since``/``until`` for the API (UTC ISO 8601); TimeError names the option."""
    now = dt.datetime.now(dt.UTC)
    out: dict[str, str] = {}
    for name in ("since", "until"):
        value = getattr(args, name, None)
        if value is not None:
            try:
                out[name] = times.for_api(times.parse_when(value, tz, now))
            except times.TimeError as e:
                raise times.TimeError(f"--{name} {e}") from None
    return out


def _params(args: argparse.Namespace, tz: dt.tzinfo) -> dict[str, str]:
    params = {n: str(getattr(args, n)) for n in FILTERS if getattr(args, n, None) is not None}
    if getattr(args, "break_glass", None) is not None:
        params["break_glass"] = args.break_glass
    if args.limit is not None:
        params["limit"] = str(args.limit)
    if getattr(args, "consultations", False):
        params["category"] = "audit_log"
    return {**params, **when(args, tz)}


def checked_subject(subject: str) -> str:
    """The id as given, or ApiError before anything is sent (a 10 kB id would otherwise be
    refused by the HTTP layer with no words and no record)."""
    problem = subject_problem(subject)
    if problem is not None:
        raise ApiError(problem)
    return urllib.parse.quote(subject, safe="")


def _path(args: argparse.Namespace) -> str:
    if args.endpoint == "subject":
        return "/admin/audit/subjects/" + checked_subject(args.subject) + "/events"
    return "/admin/audit/" + str(args.endpoint)


def run_query(args: argparse.Namespace) -> int:
    try:
        tz = times.zone(args.tz)
        params = _params(args, tz)  # activity's USER is the `user` filter
        url = args.gateway.rstrip("/") + _path(args)
        token = client.read_token(args)
    except (ApiError, times.TimeError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    if params:
        url += "?" + urllib.parse.urlencode(params)
    progress = args.endpoint == "export" and sys.stderr.isatty()
    end: dict[str, Any] = {}
    try:
        with output.destination(getattr(args, "output", None)) as out:
            rows = output.Rows(out, args.format, args.table, tz)
            if args.format == "table":
                print(f"times in {times.describe(tz)}", file=out)
            for item in client.stream(url, token):
                if "_end" in item:
                    end = item["_end"]
                    continue
                rows.add(item)
                if progress and rows.count % 1000 == 0:
                    print(f"\r{rows.count} rows…", end="", file=sys.stderr, flush=True)
            rows.close()
            if not end or end.get("error"):
                rid = end.get("request_id", "-")
                raise ApiError(
                    f"the answer is incomplete: the store failed mid-way (request {rid})"
                )
    except (ApiError, OSError) as e:
        print(f"\npd-gateway: {e}" if progress else f"pd-gateway: {e}", file=sys.stderr)
        return 1
    if progress:
        print(f"\r{rows.count} rows", file=sys.stderr)
    if end.get("truncated"):
        print(
            f"pd-gateway: stopped at {rows.count} rows (the limit); narrow the filters",
            file=sys.stderr,
        )
    if end.get("timed_out"):
        print("pd-gateway: stopped at the time limit; narrow the filters", file=sys.stderr)
    return 0


def register_report(audit_sub: Any) -> None:
    r = audit_sub.add_parser(
        "subject-report", help="a data subject's report: printable HTML or JSON (6.1.1, 6.3)"
    )
    r.add_argument("subject", help="the data subject's id, as the business system knows it")
    client.connection(r)
    r.add_argument("--format", choices=("html", "json"), default="html", help="output format")
    r.add_argument(
        "--output", "-o", help="write here (whole, or not at all) instead of standard output"
    )
    period(r)
    r.add_argument(
        "--request",
        help="the register's request this report answers (6.3): the register notes it issued",
    )
    r.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    """The same period (`--until` given, or in the past) gives the same report."""
    from gateway.cli.report_html import render

    try:
        tz = times.zone(args.tz)
        params = when(args, tz)
        if args.request:
            params["request"] = args.request
        path = "/admin/audit/subjects/" + checked_subject(args.subject) + "/report"
        token = client.read_token(args)
    except (ApiError, times.TimeError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    if params:
        path += "?" + urllib.parse.urlencode(params)
    try:
        answer = client.request(args.gateway.rstrip("/") + path, token)
        text = (
            json.dumps({"subject": args.subject, **answer}, ensure_ascii=False, indent=2)
            if args.format == "json"
            else render(args.subject, answer, tz)
        )
        with output.destination(args.output) as out:
            out.write(text + "\n")
    except (ApiError, OSError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    until = dt.datetime.fromtimestamp(answer["period"]["until_us"] / 1e6, dt.UTC)
    print(
        f"pd-gateway: the trail up to {times.for_api(until)}; the same --until gives the same "
        "numbers",
        file=sys.stderr,
    )
    return 0
