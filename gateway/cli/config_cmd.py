"""`pd-gateway config check FILE [--json]` and `pd-gateway routes --config FILE [--json]`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.config.load import load_config
from gateway.config.model import Route


def register(sub: Any) -> None:
    c = sub.add_parser("config", help="configuration commands")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a config; --json prints the effective config")
    check.add_argument("file", help="the gateway YAML config to validate")
    check.add_argument("--json", action="store_true", help="print the effective configuration")
    check.set_defaults(run=run_check)

    r = sub.add_parser("routes", help="print the route table")
    r.add_argument("--config", required=True, help="gateway YAML config")
    r.add_argument("--json", action="store_true", help="print the routes as JSON")
    r.set_defaults(run=run_routes)


def run_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    if args.json:
        print(cfg.to_json())
    else:
        print(f"{args.file}: ok ({len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams)")
    return 0


def _subject(route: Route) -> str:
    s = route.subject
    if s is None:
        return "-"
    parts = []
    if s.path_template:
        parts.append(f"path {s.path_template}")
    if s.query:
        parts.append(f"query {s.query}")
    if s.input_names:  # decision 039: refused in the query, cookies and bodies
        parts.append(f"input {','.join(s.input_names)}")
    return ", ".join(parts)


def run_routes(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    rows: list[dict[str, Any]] = [
        {
            "name": r.name,
            "prefix": r.prefix,
            "methods": sorted(r.methods) if r.methods else sorted(r.actions),
            "upstream": r.upstream,
            "upstream_url": r.upstream_url,
            "system": r.system,
            "category": r.category,
            "purpose": r.purpose,
            "actions": dict(sorted(r.actions.items())),
            "subject": _subject(r),
        }
        for r in cfg.routes
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "PREFIX", "UPSTREAM", "SYSTEM", "CATEGORY", "PURPOSE", "ACTIONS", "SUBJECT")
    table: list[tuple[str, ...]] = [header] + [
        (
            r["name"],
            r["prefix"],
            f"{r['upstream']} ({r['upstream_url']})",
            r["system"],
            r["category"],
            r["purpose"],
            " ".join(f"{m}={a}" for m, a in r["actions"].items()),
            r["subject"],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0
