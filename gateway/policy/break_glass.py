"""Break-glass access: an employee invokes, with a justification and for a bounded time, the
emergency grants the policy allows their job function (policies/break-glass.yaml).

Every invocation and its end are permission changes (9.2.7); every access under it is audited
with reason ``break_glass`` and the session id as its rule, and counted in metrics for alerting
(9.1.6). Sessions live in the gateway's memory: a restart ends them (invoke again).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config.vocabulary import ACTIONS, CATEGORIES, PURPOSES
from gateway.core.errors import PolicyError
from gateway.core.ids import new_id
from gateway.policy.engine import read_policy_yaml

FILE = "break-glass.yaml"
Grant = tuple[str, str, str, str]  # system, category, action, purpose


class DurationOutOfBounds(ValueError):
    """The requested duration is not within (0, the job function's maximum]."""

    def __init__(self, max_minutes: float) -> None:
        super().__init__(f"duration must be within {max_minutes:g} minutes")
        self.max_minutes = max_minutes


@dataclass(frozen=True)
class Allowance:
    grants: frozenset[Grant]
    max_seconds: float


@dataclass(frozen=True)
class Session:
    session_id: str
    user: str
    grants: frozenset[Grant]
    started_at: float
    ends_at: float
    justification: str


def load_allowances(policies: Path) -> dict[str, Allowance]:
    """Per job function: the grants it may invoke and for how long at most."""
    path = policies / FILE
    out: dict[str, Allowance] = {}
    for role, spec in read_policy_yaml(path).items():
        try:
            grants = frozenset(
                (str(g["system"]), str(g["category"]), str(g["action"]), str(g["purpose"]))
                for g in spec["grants"]
            )
            minutes = float(spec["max_minutes"])
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(
                f"{path}: {role}: needs max_minutes and grants of system/category/action/purpose"
            ) from e
        for _, category, action, purpose in grants:
            if category not in CATEGORIES or action not in ACTIONS or purpose not in PURPOSES:
                raise PolicyError(
                    f"{path}: {role}: unknown category, action or purpose in {sorted(grants)}"
                )
        out[str(role)] = Allowance(grants, minutes * 60)
    return out


class BreakGlass:
    def __init__(self, allowances: Mapping[str, Allowance]) -> None:
        self._allowances = dict(allowances)
        self._sessions: dict[str, Session] = {}

    def allowance(self, roles: Iterable[str]) -> Allowance | None:
        found = [self._allowances[r] for r in roles if r in self._allowances]
        if not found:
            return None
        return Allowance(
            frozenset().union(*(a.grants for a in found)), max(a.max_seconds for a in found)
        )

    def open(self, user: str, roles: Iterable[str], seconds: float, justification: str) -> Session:
        """A new session for ``user``: PermissionError if no job function of ``roles`` may open one,
        DurationOutOfBounds if ``seconds`` exceeds what they may."""
        allowance = self.allowance(roles)
        if allowance is None:
            raise PermissionError("no break-glass access for these job functions")
        if not 0 < seconds <= allowance.max_seconds:
            raise DurationOutOfBounds(allowance.max_seconds / 60)
        now = time.time()
        return Session(new_id()[:16], user, allowance.grants, now, now + seconds, justification)

    def activate(self, session: Session) -> None:
        self._sessions[session.user] = session

    def allows(self, user: str, grant: Grant) -> Session | None:
        s = self._sessions.get(user)
        if s is None or grant not in s.grants:
            return None
        return s if time.time() < s.ends_at else None

    def expired(self) -> list[Session]:
        """Sessions past their end, removed (the caller records that they ended)."""
        now = time.time()
        gone = [s for s in self._sessions.values() if s.ends_at <= now]
        for s in gone:
            del self._sessions[s.user]
        return gone

    def sessions(self) -> list[Session]:
        """The sessions in force now."""
        now = time.time()
        return [s for s in self._sessions.values() if s.ends_at > now]

    @property
    def active(self) -> int:
        now = time.time()
        return sum(1 for s in self._sessions.values() if s.ends_at > now)


def describe(grants: Iterable[Grant]) -> str:
    return "; ".join(f"{s}/{c}:{a} for {p}" for s, c, a, p in sorted(grants))


def change_id(session: Session, event: str) -> str:
    return hashlib.sha256(f"{session.session_id}|{event}".encode()).hexdigest()[:32]
