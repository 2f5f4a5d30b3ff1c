"""The audit event: one per request to a personal-data route (9.1.8), allowed or not.

An access is written to the spool in two records when it is forwarded: the ``access`` record (the
decision) before the upstream sees the request, and an ``outcome`` record (status, bytes,
duration) when the response ends. A denial, an authentication failure or an upstream error is one
``access`` record with its outcome already filled in. ``join`` folds the two into one event; an
access whose outcome never came (the gateway died) stays an event with outcome ``unknown``.

The event holds as little personal data as it can (5.3): the path and the extracted subject ids,
never the query string, bodies, tokens or cookies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

SCHEMA_VERSION = 1

# Outcome values. `pending` is only ever written by the gateway itself; readers turn a pending
# access that never got its outcome record into `unknown`.
PENDING = "pending"
COMPLETE = "complete"
UNKNOWN = "unknown"


@dataclass(slots=True)
class AccessEvent:
    event_id: str
    ts_us: int
    instance: str
    seq: int
    request_id: str
    user: str
    roles: list[str]
    client_ip: str
    method: str
    path: str
    route: str
    system: str
    category: str
    action: str
    subject_ids: list[str]
    decision: str  # allow | deny
    reason: str  # why: rule, no_matching_rule, token_expired, upstream_unreachable, …
    rule: str
    policy_version: str
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration_us: int = 0
    upstream_us: int = 0
    outcome: str = PENDING
    v: int = field(default=SCHEMA_VERSION)

    def record(self) -> bytes:
        return encode({"kind": "access", **_as_dict(self)})


@dataclass(slots=True)
class Outcome:
    event_id: str
    seq: int
    status: int
    bytes_in: int
    bytes_out: int
    duration_us: int
    upstream_us: int
    outcome: str

    def record(self) -> bytes:
        return encode({"kind": "outcome", **_as_dict(self)})


def _as_dict(obj: AccessEvent | Outcome | PermissionChange) -> dict[str, Any]:
    # Not dataclasses.asdict: that deep-copies every field and was the largest single cost of
    # the request path (measured with cProfile under wrk load).
    names = _FIELDS[type(obj)]
    return dict(zip(names, attrgetter(*names)(obj), strict=True))


@dataclass(slots=True)
class PermissionChange:
    """One effective change of who may access what (9.2.7): a rule or a role assignment added
    or removed. ``change_id`` is derived from the policy versions and the rule, so replicas that
    apply the same change record the same id and the store keeps one."""

    change_id: str
    ts_us: int
    instance: str
    actor: str
    change_kind: str  # rule_added | rule_removed | role_assigned | role_unassigned
    role: str
    user: str
    rule_before: str
    rule_after: str
    policy_version_before: str
    policy_version_after: str
    reason: str
    source: str  # file | admin_api | idp

    def record(self) -> bytes:
        return encode({"kind": "permission_change", **_as_dict(self)})


_FIELDS = {
    cls: tuple(f.name for f in fields(cls)) for cls in (AccessEvent, Outcome, PermissionChange)
}

OUTCOME_FIELDS = ("status", "bytes_in", "bytes_out", "duration_us", "upstream_us", "outcome")


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def join(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Fold outcome records into their access records, in spool order of the access.

    An access still pending at the end of the input is yielded with outcome ``unknown``. Outcome
    records whose access is not in the input (it was in an earlier, already shipped segment)
    are yielded as they are, so nothing read is dropped.
    """
    waiting: dict[str, dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    for rec in records:
        kind = rec.get("kind")
        if kind == "access":
            order.append(rec)
            if rec.get("outcome") == PENDING:
                waiting[rec["event_id"]] = rec
        elif kind == "outcome":
            access = waiting.pop(rec.get("event_id", ""), None)
            if access is None:
                order.append(rec)
            else:
                for f in OUTCOME_FIELDS:
                    access[f] = rec[f]
    for rec in order:
        if rec.get("outcome") == PENDING:
            rec["outcome"] = UNKNOWN
        yield rec
