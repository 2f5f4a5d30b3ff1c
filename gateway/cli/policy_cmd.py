"""`pd-gateway policy check|test|explain|diff|roster` — policies as code for security engineers."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config.load import load_config
from gateway.config.vocabulary import PURPOSES
from gateway.core.errors import BadRequest
from gateway.forwarding.routing import RouteTable, canonical_path, subject_ids
from gateway.policy import tools as policy_tools
from gateway.policy.engine import PolicyEngine

DEFAULT_DIR = "policies"


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="lint, test, explain, diff and list the access policy")
    psub = p.add_subparsers(dest="policy_command", required=True)

    def common(cmd: Any) -> None:
        cmd.add_argument(
            "--policies", default=DEFAULT_DIR, help="directory with model.conf and policy.csv"
        )

    c = psub.add_parser("check", help="lint the policy; errors name file and line")
    common(c)
    c.add_argument("--config", help="also check that every granted system/category has a route")
    c.set_defaults(run=run_check)

    t = psub.add_parser("test", help="run the policy test cases in <policies>/tests/*.yaml")
    common(t)
    t.set_defaults(run=run_test)

    e = psub.add_parser("explain", help="route, resource, action, decision and the deciding rule")
    e.add_argument("--config", required=True, help="gateway YAML config (routes, policy files)")
    e.add_argument("--user", required=True, help="the employee's user id")
    e.add_argument("--roles", default="", help="comma-separated job functions")
    e.add_argument("--method", default="GET", help="HTTP method (default GET)")
    e.add_argument("--path", required=True, help="request path, optionally with ?query")
    e.set_defaults(run=run_explain)

    d = psub.add_parser("diff", help="the effective access delta between two policy files")
    d.add_argument("old", help="the policy.csv in force")
    d.add_argument("new", help="the proposed policy.csv")
    d.add_argument(
        "--model", default=f"{DEFAULT_DIR}/model.conf", help="Casbin model (default %(default)s)"
    )
    d.add_argument("--json", action="store_true", help="gains and losses as JSON")
    d.add_argument(
        "--config", help="show only the system/category/purpose combinations routes serve"
    )
    d.set_defaults(run=run_diff)

    r = psub.add_parser("roster", help="who may access each personal-data category (9.2.3, 9.3.12)")
    common(r)
    r.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output format"
    )
    r.add_argument(
        "--config", help="list only the system/category/purpose combinations routes serve"
    )
    r.set_defaults(run=run_roster)


def _files(directory: str) -> tuple[Path, Path]:
    base = Path(directory)
    return base / "model.conf", base / "policy.csv"


def run_check(args: argparse.Namespace) -> int:
    model, policy = _files(args.policies)
    known = None
    if args.config:
        cfg = load_config(args.config)
        known = {(r.system, r.category) for r in cfg.routes}
    settings = policy_tools.load_lint_settings(Path(args.policies))
    problems = policy_tools.check(
        model, policy, known_resources=known, special_categories=settings.get("special_categories")
    )
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problems", file=sys.stderr)
        return 1
    print(f"{policy}: ok")
    return 0


def run_test(args: argparse.Namespace) -> int:
    model, policy = _files(args.policies)
    cases, problems = policy_tools.load_cases(Path(args.policies) / "tests")
    for p in problems:
        print(p, file=sys.stderr)
    engine = PolicyEngine.load(model, policy)
    results = policy_tools.run_cases(engine, cases)
    for case, ok, detail in results:
        print(
            f"{'PASS' if ok else 'FAIL'} {case.file.name}: {case.name}"
            + ("" if ok else f" — expected {case.expect}, {detail}")
        )
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed + len(problems)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not results else 0


def run_explain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    engine = PolicyEngine.load(cfg.authz.model, cfg.authz.policy)
    raw = args.path
    try:
        path = canonical_path(raw)
        route = RouteTable(cfg.routes).match(path, args.method.upper())
    except BadRequest as e:
        print(f"path {raw!r} is refused before routing (400): {e.reason}")
        return 0
    if route is None:
        print(f"no route for {args.method.upper()} {path}: 404")
        return 0
    action = route.actions.get(args.method.upper())
    print(f"route     {route.name} ({route.prefix} → {route.upstream})")
    if action is None:
        print(f"action    none for {args.method.upper()}: 405")
        return 0
    try:
        subjects = subject_ids(route, path, raw.partition("?")[2])
    except BadRequest as e:
        print(f"path {raw!r} is refused before authorisation (400): {e.reason}")
        return 0
    roles = tuple(sorted({r.strip() for r in args.roles.split(",") if r.strip()}))
    d = engine.decide(args.user, roles, route.system, route.category, action, route.purpose)
    print(f"resource  {route.system}/{route.category}  action {action}")
    print(f"purpose   {route.purpose} ({PURPOSES[route.purpose]})")
    print(f"subjects  {', '.join(subjects) or '-'}")
    print(f"decision  {'ALLOW' if d.allowed else 'DENY (no rule grants it)'}")
    print(f"rule      {d.rule or '-'}")
    print(f"policy    {d.policy_version}")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    delta = policy_tools.diff(Path(args.model), Path(args.old), Path(args.new))
    if args.config:
        served = {(r.system, r.category, r.purpose) for r in load_config(args.config).routes}
        delta.gains = [(s, r) for s, r in delta.gains if (r[0], r[1], r[3]) in served]
        delta.losses = [(s, r) for s, r in delta.losses if (r[0], r[1], r[3]) in served]
    if args.json:
        print(
            json.dumps(
                {
                    "gains": [[s, *r] for s, r in delta.gains],
                    "losses": [[s, *r] for s, r in delta.losses],
                },
                indent=2,
            )
        )
        return 0
    for s, (system, category, action, purpose) in delta.gains:
        print(f"+ {s} gains {action} on {system}/{category} for {purpose}")
    for s, (system, category, action, purpose) in delta.losses:
        print(f"- {s} loses {action} on {system}/{category} for {purpose}")
    if not delta.gains and not delta.losses:
        print("no change in effective access")
    return 0


def run_roster(args: argparse.Namespace) -> int:
    model, policy = _files(args.policies)
    rows = policy_tools.roster(model, policy)
    if args.config:
        served = {(r.system, r.category, r.purpose) for r in load_config(args.config).routes}
        rows = [r for r in rows if (r["system"], r["category"], r["purpose"]) in served]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["system", "category", "action", "purpose", "job_functions", "mapped_members"])
        for r in rows:
            w.writerow(
                [
                    r["system"],
                    r["category"],
                    r["action"],
                    r["purpose"],
                    " ".join(r["job_functions"]),
                    " ".join(r["mapped_members"]),
                ]
            )
    else:
        print(
            f"{'SYSTEM/CATEGORY':<24} {'ACTION':<7} {'PURPOSE':<14} JOB FUNCTIONS (MAPPED MEMBERS)"
        )
        for r in rows:
            members = f" ({', '.join(r['mapped_members'])})" if r["mapped_members"] else ""
            print(
                f"{r['system'] + '/' + r['category']:<24} {r['action']:<7} {r['purpose']:<14} "
                f"{', '.join(r['job_functions'])}{members}"
            )
    return 0
