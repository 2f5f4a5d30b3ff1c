"""PolicyEngine: Casbin RBAC where roles are job functions and objects are personal-data categories.

Contract: ``decide(user, roles, system, category, action)`` returns a Decision naming the rule that
allowed it (or none: deny by default, 4.4) and the policy version that decided it. It never raises
for a well-formed request; a failure inside is turned into a deny by the pipeline.

Why a cache: pycasbin evaluates every rule through a pure-Python expression evaluator (~3 µs per
rule), so 3,000 rules cost ~10 ms per decision. A decision depends only on the subjects Casbin
sees, the system, the category and the action, so it is cached under exactly that key. The user
is part of the key only when some `g` rule names that user; otherwise every holder of the same
roles shares one entry. A reload builds a new engine with an empty cache and swaps it in at once
(docs/decisions/002-decision-cache.md).

Users and groups never share a name (4.4): a user is `user:<sub>` in `g` rules and in what the
engine asks Casbin; anything else on the left of a `g` rule is an IdP group or a job function
from the token's roles claim. A token role spelt `user:…` is never asked, so no role or group can
be taken for a user, and a `sub` equal to a group's name gets nothing from that group.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
import yaml

from gateway.core.errors import PolicyError

log = logging.getLogger(__name__)

REQUEST_FIELDS = ("sub", "sys", "cat", "act", "pur")
USER_PREFIX = "user:"  # 4.4: users and IdP groups/job functions in separate namespaces


def user_subject(user: str) -> str:
    """The Casbin subject of an authenticated user (the token's `sub`)."""
    return USER_PREFIX + user


def is_user_subject(name: str) -> bool:
    return name.startswith(USER_PREFIX)


EXPIRY_FILE = "expiry.yaml"


def read_policy_yaml(path: Path) -> dict[Any, Any]:
    """A YAML mapping kept beside the policy ({} if the file is absent); PolicyError naming the
    file if it is not valid YAML or not a mapping."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: invalid YAML") from e
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: must be a mapping")
    return data


def load_expiry(path: Path) -> dict[tuple[str, ...], float]:
    """Time-bound grants: `"<rule as in policy.csv>": <UTC timestamp>` per line of expiry.yaml.

    A rule listed here is in force until that time, then lapses by itself (a contractor's access
    ends without anyone remembering to remove it); the lapse is recorded as a change (9.2.7)."""
    data = read_policy_yaml(path)
    out: dict[tuple[str, ...], float] = {}
    for rule, when in data.items():
        fields = tuple(f.strip() for f in str(rule).split(","))
        if isinstance(when, str):
            try:
                when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError as e:
                raise PolicyError(f"{path}: {rule!r}: {when!r} is not a time") from e
        if not isinstance(when, dt.datetime):
            raise PolicyError(f"{path}: {rule!r}: give a time like 2026-12-31T00:00:00Z")
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        if fields[0] not in ("p", "g", "g2"):
            raise PolicyError(f"{path}: {rule!r}: not a rule (p, g or g2)")
        out[fields] = when.timestamp()
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str
    policy_version: str


class PolicyEngine:
    def __init__(
        self,
        enforcer: casbin.Enforcer,
        version: str,
        *,
        cache_size: int = 100_000,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        self._enforcer = enforcer
        self.version = version
        self._cache: dict[tuple[str | None, tuple[str, ...], str, str, str, str], Decision] = {}
        self._cache_size = cache_size
        self._on_cache = on_cache or (lambda hit: None)
        grouping = enforcer.get_grouping_policy()
        # Members named on the left of a `g` rule: users (`user:<sub>`) or IdP groups.
        self._mapped_members = frozenset(row[0] for row in grouping)
        self.rule_count = len(enforcer.get_policy())
        self.next_expiry: float | None = None  # when the next time-bound grant lapses

    @classmethod
    def load(
        cls,
        model: Path,
        policy: Path,
        *,
        cache_size: int = 100_000,
        on_cache: Callable[[bool], None] | None = None,
    ) -> PolicyEngine:
        """Load model and policy files; raise PolicyError naming the file on any problem."""
        try:
            model_text = model.read_bytes()
            policy_text = policy.read_bytes()
        except OSError as e:
            raise PolicyError(f"{e.filename}: cannot read policy file: {e.strerror}") from e
        try:
            enforcer = casbin.Enforcer(str(model), str(policy))
        except Exception as e:  # casbin raises bare Exceptions for parse errors
            raise PolicyError(f"{model} / {policy}: cannot load policy: {e}") from e
        tokens = enforcer.get_model().model["r"]["r"].tokens
        if [t.partition("_")[2] for t in tokens] != list(REQUEST_FIELDS):
            raise PolicyError(
                f"{model}: request_definition must be r = {', '.join(REQUEST_FIELDS)}"
            )
        for n, row in enumerate(enforcer.get_policy(), 1):
            if len(row) != 4:
                raise PolicyError(f"{policy}: policy rule {n} must have 4 fields: {row}")
        expiry = load_expiry(policy.parent / EXPIRY_FILE)
        now = time.time()
        lapsed = sorted(rule for rule, at in expiry.items() if at <= now)
        enforcer.enable_auto_save(False)  # never write back to the policy file
        for rule in lapsed:  # a time-bound grant past its end is not in force
            if rule[0] == "p":
                enforcer.remove_policy(*rule[1:])
            else:
                enforcer.remove_named_grouping_policy(rule[0], *rule[1:])
        pending = [at for at in expiry.values() if at > now]
        digest = hashlib.sha256(model_text + b"\0" + policy_text)
        digest.update(repr(sorted(expiry.items())).encode() + repr(lapsed).encode())
        engine = cls(enforcer, digest.hexdigest()[:12], cache_size=cache_size, on_cache=on_cache)
        engine.next_expiry = min(pending) if pending else None
        return engine

    def decide(
        self,
        user: str,
        roles: tuple[str, ...],
        system: str,
        category: str,
        action: str,
        purpose: str,
    ) -> Decision:
        typed = user_subject(user)
        member = typed if typed in self._mapped_members else None
        if any(is_user_subject(r) for r in roles):  # 4.4: a role is never taken for a user
            roles = tuple(r for r in roles if not is_user_subject(r))
        key = (member, roles, system, category, action, purpose)
        cached = self._cache.get(key)
        if cached is not None:
            self._on_cache(True)
            return cached
        self._on_cache(False)
        decision = self._decide_uncached(member, roles, system, category, action, purpose)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = decision
        return decision

    def _decide_uncached(
        self,
        member: str | None,
        roles: tuple[str, ...],
        system: str,
        category: str,
        action: str,
        purpose: str,
    ) -> Decision:
        subjects = roles if member is None else (member, *roles)
        for subject in subjects:
            allowed, explain = self._enforcer.enforce_ex(subject, system, category, action, purpose)
            if allowed:
                rule = "p, " + ", ".join(explain) if explain else ""
                return Decision(True, rule, self.version)
        return Decision(False, "", self.version)

    def rules(self) -> frozenset[tuple[str, ...]]:
        """Every rule in force, as ("p", role, system, category, action) or ("g", member, role)."""
        p = {("p", *row) for row in self._enforcer.get_policy()}
        g = {("g", *row) for row in self._enforcer.get_grouping_policy()}
        g2 = {("g2", *row) for row in self._purpose_rules()}
        return frozenset(p | g | g2)

    def _purpose_rules(self) -> list[list[str]]:
        if "g2" not in self._enforcer.get_model().model.get("g", {}):
            return []
        rows: list[list[str]] = self._enforcer.get_named_grouping_policy("g2")
        return rows


def rule_text(rule: tuple[str, ...]) -> str:
    return ", ".join(rule)


Change = tuple[str, str, str, str, str, str]  # kind, role, user, rule before, rule after, id


def permission_changes(old: PolicyEngine, new: PolicyEngine) -> list[Change]:
    """One entry per effective change between two policies (9.2.7), in a stable order."""
    out = []
    for rule in sorted(new.rules() - old.rules()):
        kind = {"p": "rule_added", "g": "role_assigned", "g2": "purpose_added"}[rule[0]]
        out.append(_change(kind, rule, "", rule_text(rule), old.version, new.version))
    for rule in sorted(old.rules() - new.rules()):
        kind = {"p": "rule_removed", "g": "role_unassigned", "g2": "purpose_removed"}[rule[0]]
        out.append(_change(kind, rule, rule_text(rule), "", old.version, new.version))
    return out


def _change(
    kind: str, rule: tuple[str, ...], before: str, after: str, v_old: str, v_new: str
) -> Change:
    role = rule[2] if rule[0] == "g" else rule[1]
    # The user as access events name them (the `sub`); a group mapping keeps the group's name.
    user = rule[1].removeprefix(USER_PREFIX) if rule[0] == "g" else ""
    key = f"{v_old}|{v_new}|{kind}|{rule_text(rule)}"
    return (kind, role, user, before, after, hashlib.sha256(key.encode()).hexdigest()[:32])


class PolicyStore:
    """Holds the engine in force; ``reload`` swaps in a new one only if it loads cleanly."""

    def __init__(
        self, model: Path, policy: Path, *, cache_size: int, on_cache: Callable[[bool], None]
    ):
        self._model = model
        self._policy = policy
        self._cache_size = cache_size
        self._on_cache = on_cache
        self.engine = self._load()

    def _load(self) -> PolicyEngine:
        return PolicyEngine.load(
            self._model, self._policy, cache_size=self._cache_size, on_cache=self._on_cache
        )

    def candidate(self) -> PolicyEngine:
        """Load the files again without installing them (PolicyError if they are invalid)."""
        return self._load()

    def install(self, engine: PolicyEngine) -> None:
        old, self.engine = self.engine, engine
        log.info(
            "policy in force", extra={"old_version": old.version, "new_version": engine.version}
        )

    def reload(self) -> PolicyEngine:
        """Load and install at once; if the files are invalid, the old policy stays in force."""
        engine = self.candidate()
        self.install(engine)
        return engine

    def files_stamp(self) -> tuple[float, ...]:
        """Modification times of the policy files (for change watching)."""
        expiry = self._policy.parent / EXPIRY_FILE
        extra = (expiry.stat().st_mtime,) if expiry.exists() else ()
        return (self._model.stat().st_mtime, self._policy.stat().st_mtime, *extra)
