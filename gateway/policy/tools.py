"""Policies as code: lint, test cases, effective access, diff and roster (9.2.3, 9.3.12).

Pure functions over the policy files; the CLI (`pd-gateway policy …`) prints what they return.
Effective access is computed by asking Casbin itself — the same engine that decides requests —
for every subject and every resource the policies mention, so the diff and the roster cannot
disagree with enforcement.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.vocabulary import ACTIONS, AUDIT_CATEGORY, AUDIT_SYSTEM, CATEGORIES, PURPOSES
from gateway.core.errors import PolicyError
from gateway.policy.break_glass import FILE as BREAK_GLASS_FILE
from gateway.policy.break_glass import load_allowances
from gateway.policy.engine import (
    EXPIRY_FILE,
    USER_PREFIX,
    PolicyEngine,
    is_user_subject,
    load_expiry,
    read_policy_yaml,
)

Resource = tuple[str, str, str, str]  # system, category, action, purpose
WILDCARDS = ("*", "all", "any", ".*")


@dataclass(frozen=True)
class Rule:
    kind: str  # p or g
    fields: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def read_rules(policy: Path) -> tuple[list[Rule], list[Problem]]:
    """The rules of a policy CSV with their line numbers (comments and blank lines skipped)."""
    rules: list[Rule] = []
    problems: list[Problem] = []
    try:
        text = policy.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"{policy}: cannot read policy file: {e.strerror}") from e
    for n, line in enumerate(text.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields_ = tuple(
            f.strip() for f in next(csv.reader(io.StringIO(text), skipinitialspace=True))
        )
        kind = fields_[0]
        if (kind == "p" and len(fields_) == 5) or (kind in ("g", "g2") and len(fields_) == 3):
            rules.append(Rule(kind, fields_[1:], n))
        else:
            problems.append(
                Problem(
                    policy,
                    n,
                    "expected 'p, role, system, category, action', 'g, member, role' "
                    "or 'g2, role, purpose'",
                )
            )
    return rules, problems


def load_lint_settings(policies: Path) -> dict[str, Any]:
    return read_policy_yaml(policies / "lint.yaml")


def check(
    model: Path,
    policy: Path,
    *,
    known_resources: Iterable[tuple[str, str]] | None = None,
    special_categories: Mapping[str, Iterable[str]] | None = None,
    idp_groups: Iterable[str] | None = None,
) -> list[Problem]:
    """Every problem with the policy, each naming file and line; empty means it may be applied.

    ``idp_groups`` (default: `idp_groups` in lint.yaml beside the policy, if listed): the IdP
    groups `g` rules may map; any other untyped member is a user missing its `user:` prefix."""
    try:
        rules, problems = read_rules(policy)
    except PolicyError as e:
        return [Problem(policy, 0, str(e))]
    if idp_groups is None:
        listed = load_lint_settings(policy.parent).get("idp_groups")
        idp_groups = [str(g) for g in listed] if isinstance(listed, list) else None
    problems += _namespace_problems(policy, rules, idp_groups)
    try:
        PolicyEngine.load(model, policy)
    except PolicyError as e:
        problems.append(Problem(policy, 0, f"does not load: {e}"))
    p_rules = [r for r in rules if r.kind == "p"]
    roles = {r.fields[0] for r in p_rules}
    known = set(known_resources) if known_resources is not None else None
    if known is not None:  # 9.2.6: the trail is served by the admin port's audit API
        known.add((AUDIT_SYSTEM, AUDIT_CATEGORY))
    seen: set[tuple[str, ...]] = set()
    for r in rules:
        if r.fields in seen and r.kind == "p":
            problems.append(Problem(policy, r.line, f"duplicate rule {', '.join(r.fields)}"))
        seen.add(r.fields)
        if any(f.lower() in WILDCARDS or "*" in f for f in r.fields):
            problems.append(
                Problem(policy, r.line, "wildcards grant everything: name each grant (4.4)")
            )
            continue
        if r.kind in ("g", "g2"):
            role = r.fields[1] if r.kind == "g" else r.fields[0]
            if role not in roles:
                problems.append(
                    Problem(policy, r.line, f"role {role!r} has no grant (no p rule names it)")
                )
            if r.kind == "g2" and r.fields[1] not in PURPOSES:
                known_purposes = ", ".join(PURPOSES)
                problems.append(
                    Problem(
                        policy, r.line, f"unknown purpose {r.fields[1]!r}; one of {known_purposes}"
                    )
                )
            continue
        role, system, category, action = r.fields
        if category not in CATEGORIES:
            problems.append(
                Problem(
                    policy, r.line, f"unknown category {category!r}; one of {', '.join(CATEGORIES)}"
                )
            )
        if action not in ACTIONS:
            problems.append(
                Problem(policy, r.line, f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
            )
        if known is not None and (system, category) not in known:
            problems.append(Problem(policy, r.line, f"no route serves {system}/{category}"))
        allowed = (special_categories or {}).get(category)
        if allowed is not None and role not in set(allowed):
            problems.append(
                Problem(
                    policy,
                    r.line,
                    f"{category} is a special category (2.3): "
                    f"only {', '.join(sorted(allowed))} may be granted it",
                )
            )
    # Time-bound grants must name rules of this policy.
    expiry_path = policy.parent / EXPIRY_FILE
    try:
        expiry = load_expiry(expiry_path)
    except PolicyError as e:
        problems.append(Problem(expiry_path, 0, str(e)))
        expiry = {}
    present = {(r.kind, *r.fields) for r in rules}
    for rule in expiry:
        if rule not in present:
            problems.append(
                Problem(expiry_path, 0, f"{', '.join(rule)!r} is not a rule of {policy.name}")
            )
    # Break-glass allowances must parse and name known categories, actions and purposes.
    try:
        load_allowances(policy.parent)
    except PolicyError as e:
        problems.append(Problem(policy.parent / BREAK_GLASS_FILE, 0, str(e)))
    # 4.2: a grant applies only within the job function's purposes; a role with none is inert.
    with_purpose = {r.fields[0] for r in rules if r.kind == "g2"}
    for role in sorted(roles - with_purpose):
        line = min(r.line for r in p_rules if r.fields[0] == role)
        hint = f"add 'g2, {role}, <purpose>'"
        problems.append(Problem(policy, line, f"role {role!r} works for no purpose: {hint}"))
    # Nobody reads everything: no role may read every category the policy grants reads on
    # (of the business systems: the audit trail is read apart, 9.2.6).
    readable = {
        (r.fields[1], r.fields[2])
        for r in p_rules
        if r.fields[3] == "read" and r.fields[2] not in ("none", AUDIT_CATEGORY)
    }
    if len(readable) > 1:
        for role in sorted(roles):
            mine = {
                (r.fields[1], r.fields[2])
                for r in p_rules
                if r.fields[0] == role and r.fields[3] == "read"
            }
            if readable <= mine:
                line = min(r.line for r in p_rules if r.fields[0] == role)
                problems.append(
                    Problem(
                        policy, line, f"role {role!r} reads every category: split the grant (4.4)"
                    )
                )
    return problems


def _namespace_problems(
    policy: Path, rules: Iterable[Rule], idp_groups: Iterable[str] | None
) -> list[Problem]:
    """4.4: users (`user:<sub>`) only on the left of `g` rules; untyped members only known IdP
    groups, so no token `sub` can inherit a group's job functions by sharing its name."""
    groups = set(idp_groups) if idp_groups is not None else None
    out = []
    for r in rules:
        member, others = (r.fields[0], r.fields[1:]) if r.kind == "g" else (None, r.fields)
        if any(is_user_subject(f) for f in others):
            out.append(Problem(policy, r.line, f"{USER_PREFIX}… names a user: only as a g member"))
        if member is None or is_user_subject(member):
            if member == USER_PREFIX:
                out.append(Problem(policy, r.line, "user: needs the user's sub"))
            continue
        if groups is not None and member not in groups:
            out.append(
                Problem(
                    policy,
                    r.line,
                    f"member {member!r} is no IdP group listed in lint.yaml idp_groups; "
                    f"a user is written {USER_PREFIX}{member} (4.4)",
                )
            )
    return out


def resources(rules: Iterable[Rule]) -> set[Resource]:
    """Every granted (system, category, action) under every purpose the policy names."""
    rules = list(rules)
    purposes = {r.fields[1] for r in rules if r.kind == "g2"}
    grants = {(r.fields[1], r.fields[2], r.fields[3]) for r in rules if r.kind == "p"}
    return {(*g, p) for g in grants for p in purposes}


def subjects(rules: Iterable[Rule]) -> tuple[set[str], set[str]]:
    """(roles, members): job functions with grants, and users/IdP groups mapped by g rules."""
    rules = list(rules)
    roles = {r.fields[0] for r in rules if r.kind == "p"} | {
        r.fields[1] for r in rules if r.kind == "g"
    }
    members = {r.fields[0] for r in rules if r.kind == "g"}
    return roles, members - roles


def effective_access(
    engine: PolicyEngine, subjects_: Iterable[str], resources_: Iterable[Resource]
) -> dict[str, set[Resource]]:
    """What each subject may do, by asking the engine as a user (`user:<sub>`, with no roles) or
    as a role or IdP group in a token (with no user mapping)."""
    res = sorted(resources_)
    out: dict[str, set[Resource]] = {}
    for s in sorted(subjects_):
        user, roles = (s.removeprefix(USER_PREFIX), ()) if is_user_subject(s) else ("", (s,))
        out[s] = {r for r in res if engine.decide(user, roles, *r).allowed}
    return out


@dataclass
class Delta:
    gains: list[tuple[str, Resource]] = field(default_factory=list)
    losses: list[tuple[str, Resource]] = field(default_factory=list)


def diff(model: Path, old: Path, new: Path) -> Delta:
    """The effective access delta between two policies: who gains or loses what."""
    old_rules, _ = read_rules(old)
    new_rules, _ = read_rules(new)
    old_engine = PolicyEngine.load(model, old)
    new_engine = PolicyEngine.load(model, new)
    res = resources(old_rules) | resources(new_rules)
    old_roles, old_members = subjects(old_rules)
    new_roles, new_members = subjects(new_rules)
    everyone = old_roles | new_roles | old_members | new_members
    before = effective_access(old_engine, everyone, res)
    after = effective_access(new_engine, everyone, res)
    delta = Delta()
    for s in sorted(everyone):
        for r in sorted(after[s] - before[s]):
            delta.gains.append((s, r))
        for r in sorted(before[s] - after[s]):
            delta.losses.append((s, r))
    return delta


def roster(model: Path, policy: Path) -> list[dict[str, Any]]:
    """Per system/category/action: the job functions and the mapped members with access — the
    list of persons with access per category that 9.2.3 and 9.3.12 ask for."""
    rules, _ = read_rules(policy)
    engine = PolicyEngine.load(model, policy)
    roles, members = subjects(rules)
    by_role = effective_access(engine, roles, resources(rules))
    by_member = effective_access(engine, members, resources(rules))
    rows = []
    for res in sorted(resources(rules)):
        functions = sorted(r for r, grants in by_role.items() if res in grants)
        if not functions:
            continue  # nobody may do this for this purpose
        rows.append(
            {
                "system": res[0],
                "category": res[1],
                "action": res[2],
                "purpose": res[3],
                "job_functions": functions,
                "mapped_members": sorted(m for m, grants in by_member.items() if res in grants),
            }
        )
    return rows


@dataclass(frozen=True)
class Case:
    name: str
    roles: tuple[str, ...]
    user: str
    resource: Resource
    expect: str
    file: Path


def load_cases(directory: Path) -> tuple[list[Case], list[Problem]]:
    cases: list[Case] = []
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or []
        except yaml.YAMLError as e:
            problems.append(
                Problem(
                    path, getattr(getattr(e, "problem_mark", None), "line", -1) + 1, "invalid YAML"
                )
            )
            continue
        for i, item in enumerate(data if isinstance(data, list) else []):
            try:
                cases.append(
                    Case(
                        name=str(item["name"]),
                        roles=tuple(item.get("roles", [])),
                        user=str(item.get("user", "test-user")),
                        resource=(
                            str(item["system"]),
                            str(item["category"]),
                            str(item["action"]),
                            str(item["purpose"]),
                        ),
                        expect=str(item["expect"]),
                        file=path,
                    )
                )
                if item["expect"] not in ("allow", "deny"):
                    raise KeyError("expect")
            except (KeyError, TypeError) as e:
                problems.append(
                    Problem(
                        path,
                        0,
                        f"case {i}: needs name, system, category, action, purpose, "
                        f"expect: allow|deny ({e})",
                    )
                )
    return cases, problems


def run_cases(engine: PolicyEngine, cases: Iterable[Case]) -> list[tuple[Case, bool, str]]:
    out = []
    for c in cases:
        d = engine.decide(c.user, tuple(sorted(c.roles)), *c.resource)
        got = "allow" if d.allowed else "deny"
        out.append((c, got == c.expect, f"got {got}" + (f" by [{d.rule}]" if d.rule else "")))
    return out
