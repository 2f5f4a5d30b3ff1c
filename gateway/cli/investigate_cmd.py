"""`pd-gateway audit who-accessed | activity | search | export | permissions`: clients of the admin
port's audit query API (gateway.web.audit_api), so they work while the gateway owns the
embedded store.

SECURITY: the bearer token comes from a file (``--token-file``) or the environment
(``PDGW_TOKEN``), never from a flag's value, so it never lands in shell history or in a process
list; it is sent to the admin URL only and never printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

TOKEN_ENV = "PDGW_TOKEN"
URL_ENV = "PDGW_ADMIN_URL"
DEFAULT_URL = "http://127.0.0.1:9470"

EVENT_TABLE = (
    ("time", "ts_us"),
    ("user", "user"),
    ("job functions", "roles"),
    ("system", "system"),
    ("category", "category"),
    ("action", "action"),
    ("decision", "decision"),
    ("status", "status"),
    ("reason", "reason"),
    ("rule", "rule"),
    ("subjects", "subject_ids"),
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


class ApiError(Exception):
    pass


def _common(
    p: argparse.ArgumentParser, *, formats: tuple[str, ...] = ("table", "json", "csv")
) -> None:
    _connection(p)
    p.add_argument("--format", choices=formats, default=formats[0], help="output format")
    p.add_argument("--since", help="from this time (ISO 8601, UTC unless a zone is given)")
    p.add_argument("--until", help="up to this time (exclusive)")
    p.add_argument("--limit", type=int, help="at most this many rows (the server caps it too)")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="the employee (token subject)")
    p.add_argument("--role", help="a job function the employee held")
    p.add_argument("--system", help="hr, crm, site, audit, …")
    p.add_argument("--category", help="personal-data category")
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
    _common(w)
    w.set_defaults(run=run_query, endpoint="subject", table=EVENT_TABLE)
    a = audit_sub.add_parser("activity", help="everything one employee did, refusals included")
    a.add_argument("user", help="the employee (token subject)")
    _common(a)
    a.set_defaults(run=run_query, endpoint="events", table=EVENT_TABLE)
    s = audit_sub.add_parser("search", help="access events by filters")
    _common(s)
    _filters(s)
    s.set_defaults(run=run_query, endpoint="events", table=EVENT_TABLE)
    e = audit_sub.add_parser("export", help="access events by filters, streamed (for a regulator)")
    _common(e, formats=("csv", "json"))
    _filters(e)
    e.add_argument("--output", "-o", help="write here instead of standard output")
    e.set_defaults(run=run_query, endpoint="export", table=EVENT_TABLE)
    pm = audit_sub.add_parser("permissions", help="changes of access rights (9.2.7)")
    _common(pm)
    pm.add_argument("--user", help="changes for or by this employee")
    pm.set_defaults(run=run_query, endpoint="permissions", table=PERMISSION_TABLE)


def read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ApiError(f"no token: use --token-file FILE or set {TOKEN_ENV}")
    return token


def _params(args: argparse.Namespace) -> dict[str, str]:
    names = (
        "user",
        "role",
        "system",
        "category",
        "action",
        "decision",
        "status",
        "reason",
        "break_glass",
        "since",
        "until",
        "limit",
    )
    return {n: str(getattr(args, n)) for n in names if getattr(args, n, None) is not None}


def _path(args: argparse.Namespace) -> str:
    if args.endpoint == "subject":
        return "/admin/audit/subjects/" + urllib.parse.quote(args.subject, safe="") + "/events"
    return "/admin/audit/" + str(args.endpoint)


def stream(url: str, token: str) -> Iterator[dict[str, Any]]:
    """The API's NDJSON lines, one at a time (the answer is never whole in memory)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        resp = urllib.request.urlopen(req, timeout=120)
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
            raise ApiError(f"{e.code} {body.get('error')}: {body.get('message')}") from None
        except ValueError:
            raise ApiError(f"HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise ApiError(f"cannot reach the gateway's admin port: {e.reason}") from None
    with resp:
        for line in resp:
            if line.strip():
                yield json.loads(line)


def _cell(key: str, value: Any) -> str:
    if key == "ts_us":
        return datetime.fromtimestamp(int(value) / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value) if value not in ("", None) else "-"


def _table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], out: TextIO) -> None:
    cells = [[_cell(k, r.get(k, "")) for _, k in columns] for r in rows]
    widths = [
        min(40, max([len(h), *(len(c[i]) for c in cells)])) for i, (h, _) in enumerate(columns)
    ]
    print(
        "  ".join(h.upper().ljust(w) for (h, _), w in zip(columns, widths, strict=True)), file=out
    )
    for c in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(c, widths, strict=True)).rstrip(), file=out)


def run_query(args: argparse.Namespace) -> int:
    try:
        token = read_token(args)
    except (ApiError, OSError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    params = _params(args)  # activity's USER is the `user` filter
    url = args.gateway.rstrip("/") + _path(args)
    if params:
        url += "?" + urllib.parse.urlencode(params)
    out: TextIO = sys.stdout
    output = getattr(args, "output", None)
    if output:
        out = open(output, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    progress = args.endpoint == "export" and sys.stderr.isatty()
    end: dict[str, Any] = {}
    buffered: list[dict[str, Any]] = []
    writer = None
    n = 0
    try:
        for item in stream(url, token):
            if "_end" in item:
                end = item["_end"]
                continue
            n += 1
            if args.format == "json":
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
            elif args.format == "csv":
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(item), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(
                    {k: _cell(k, v) if isinstance(v, list) else v for k, v in item.items()}
                )
            else:
                buffered.append(item)  # a table needs its widths: at most the API's MAX_ROWS
            if progress and n % 1000 == 0:
                print(f"\r{n} rows…", end="", file=sys.stderr, flush=True)
    except ApiError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    finally:
        if output:
            out.close()
    if progress:
        print(f"\r{n} rows", file=sys.stderr)
    if args.format == "table":
        _table(buffered, args.table, out)
    if end.get("truncated"):
        print(f"pd-gateway: stopped at {n} rows (the limit); narrow the filters", file=sys.stderr)
    if end.get("timed_out"):
        print("pd-gateway: stopped at the time limit; narrow the filters", file=sys.stderr)
    if not end or end.get("error"):
        print("pd-gateway: the answer is incomplete (the store failed mid-way)", file=sys.stderr)
        return 1
    return 0


def register_subject(sub: Any) -> None:
    """`pd-gateway subject block ID --reason R | unblock ID --reason R | list` (6.5, 6.6)."""
    s = sub.add_parser("subject", help="block and unblock data subjects (6.5, 6.6)")
    ssub = s.add_subparsers(dest="subject_command", required=True)
    for action, text in (("block", "block a data subject"), ("unblock", "lift a block")):
        p = ssub.add_parser(action, help=text)
        p.add_argument("subject", help="the data subject's id, as the business system knows it")
        p.add_argument("--reason", required=True, help="why: the subject's request, a ticket")
        _connection(p)
        p.set_defaults(run=run_block, action=action)
    ls = ssub.add_parser("list", help="subjects blocked now")
    _connection(ls)
    ls.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    ls.set_defaults(run=run_block_list)


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gateway",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the gateway's admin URL (env {URL_ENV}; default {DEFAULT_URL})",
    )
    p.add_argument(
        "--token-file",
        help=f"a file holding your bearer token (or set {TOKEN_ENV}; never pass a token itself)",
    )


def _request(url: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())
        except ValueError:
            raise ApiError(f"HTTP {e.code}") from None
        raise ApiError(f"{e.code} {err.get('error')}: {err.get('message')}") from None
    except urllib.error.URLError as e:
        raise ApiError(f"cannot reach the gateway's admin port: {e.reason}") from None


def run_block(args: argparse.Namespace) -> int:
    try:
        token = read_token(args)
        body = {"subject": args.subject, "action": args.action, "reason": args.reason}
        answer = _request(args.gateway.rstrip("/") + "/admin/subject-blocks", token, body)
    except (ApiError, OSError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    print(f"{answer['result']} (record {answer['block_id']}, request {answer['request_id']})")
    return 0


def run_block_list(args: argparse.Namespace) -> int:
    try:
        answer = _request(args.gateway.rstrip("/") + "/admin/subject-blocks", read_token(args))
    except (ApiError, OSError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(answer, ensure_ascii=False))
        return 0
    columns = (("since", "ts_us"), ("subject", "subject"), ("by", "actor"), ("reason", "reason"))
    _table(answer["blocks"], columns, sys.stdout)
    print(f"(this gateway's view is {answer['view_age_seconds']:.1f} s old)", file=sys.stderr)
    return 0


def register_report(audit_sub: Any) -> None:
    r = audit_sub.add_parser(
        "subject-report", help="a data subject's report: printable HTML or JSON (6.1.1, 6.3)"
    )
    r.add_argument("subject", help="the data subject's id, as the business system knows it")
    _connection(r)
    r.add_argument("--format", choices=("html", "json"), default="html", help="output format")
    r.add_argument("--output", "-o", help="write here instead of standard output")
    r.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from gateway.cli.report_html import render

    path = "/admin/audit/subjects/" + urllib.parse.quote(args.subject, safe="") + "/report"
    try:
        answer = _request(args.gateway.rstrip("/") + path, read_token(args))
    except (ApiError, OSError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    text = (
        json.dumps({"subject": args.subject, **answer}, ensure_ascii=False, indent=2)
        if args.format == "json"
        else render(args.subject, answer)
    )
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0
