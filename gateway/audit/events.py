"""The audit records: one access event per audited request (9.1.8), its outcome, every change of
access rights (9.2.7), aggregate records of anonymous refusals, browser sessions' lives, subject
blocks, reviews of anomaly detections and the state changes of data subjects' requests.

An access is written to the spool in two records when it is forwarded: the ``access`` record (the
decision) before the upstream sees the request, and an ``outcome`` record (status, bytes,
duration) when the response ends. A refusal is one ``access`` record with its outcome already
filled in. ``join`` folds the two into one event; an access whose outcome never came (the gateway
died) stays an event with outcome ``unknown``.

Every record of these kinds is *chained* (docs/decisions/012-hash-chain.md): the spool gives it
the instance's next sequence number and the hash of its canonical form linked to the previous
record's hash. A record therefore knows only its own values; ``FIELDS`` names them, in the order
of the canonical form, per (kind, version).

The event holds as little personal data as it can (5.3): the path, the query string (evidence of
what the upstream was asked) and the extracted subject ids; never bodies, tokens or cookies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, ClassVar, Protocol

from gateway.core.ids import new_id

# The version of the chained record layout. 1: the unchained JSON objects of the first releases;
# 2: chained; 3: an access names the purpose it was decided for (4.2, 9.2.6), a block the label
# the DPO gave it. A record is verified with the field list of its own version (``FIELDS``).
RECORD_VERSION = 3

# Outcome values. `pending` is only ever written by the gateway itself; readers turn a pending
# access that never got its outcome record into `unknown`.
PENDING = "pending"
COMPLETE = "complete"
UNKNOWN = "unknown"


class Chained(Protocol):
    """A record the spool numbers and chains: its kind and its values in ``FIELDS`` order."""

    KIND: ClassVar[str]

    def values(self) -> tuple[Any, ...]: ...


@dataclass(slots=True)
class AccessEvent:
    KIND: ClassVar[str] = "access"

    event_id: str
    ts_us: int
    request_id: str
    user: str
    roles: list[str]
    client_ip: str
    auth: str  # how the user was identified: bearer | session | "" (none)
    session: str  # the browser session that authorised it, as a keyed hash ("" for bearer)
    method: str
    path: str
    query: str
    route: str
    system: str
    category: str
    action: str
    subject_ids: list[str]
    decision: str  # allow | deny
    reason: str  # why: rule, no_matching_rule, no_route, upstream_unreachable, …
    rule: str
    policy_version: str
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration_us: int = 0
    upstream_us: int = 0
    outcome: str = PENDING
    purpose: str = ""  # the purpose of processing the decision was taken for (3.2, 4.2, 9.2.6)

    def values(self) -> tuple[Any, ...]:
        return _values(self)

    def refuse(self, status: int, reason: str, duration_us: int) -> AccessEvent:
        """This access as a refusal (``gateway.audit.recorder.Recorder.refuse`` writes it):
        denied for ``reason``, answered ``status``, and complete in this one record — no
        outcome record follows."""
        self.decision = "deny"
        self.reason = reason
        self.status = status
        self.outcome = COMPLETE
        self.duration_us = duration_us
        return self


def access(ts_us: int | None = None, **values: Any) -> AccessEvent:
    """A new access record: a fresh event id (``gateway.core.ids``, the one id source) and the
    time now unless ``ts_us`` is given; ``values`` are the rest of ``AccessEvent``'s fields."""
    return AccessEvent(
        event_id=new_id(), ts_us=time.time_ns() // 1000 if ts_us is None else ts_us, **values
    )


@dataclass(slots=True)
class Outcome:
    KIND: ClassVar[str] = "outcome"

    event_id: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_us: int
    upstream_us: int
    outcome: str
    # Subjects named in the response (a route's declared JSON pointer; list and search endpoints),
    # at most a cap of them; the count is of all found, `response_capped` 1 if the cap was hit.
    response_subjects: list[str] = field(default_factory=list)
    response_count: int = 0
    response_capped: int = 0

    def values(self) -> tuple[Any, ...]:
        return _values(self)


@dataclass(slots=True)
class PermissionChange:
    """One effective change of who may access what (9.2.7): a rule or a role assignment added
    or removed. ``change_id`` is derived from the policy versions and the rule, so replicas that
    apply the same change record the same id, and reads count each change once."""

    KIND: ClassVar[str] = "permission_change"

    change_id: str
    ts_us: int
    actor: str
    change_kind: str  # rule_added | rule_removed | role_assigned | role_unassigned | …
    role: str
    user: str
    rule_before: str
    rule_after: str
    policy_version_before: str
    policy_version_after: str
    reason: str
    source: str  # file | admin_api | idp | expiry | break_glass

    def values(self) -> tuple[Any, ...]:
        return _values(self)


@dataclass(slots=True)
class RefusalSummary:
    """Refusals of requests that came with no valid token, counted per window, route, reason and
    client address (docs/decisions/013-anonymous-refusals.md): anonymous noise has a bounded
    record volume, and no refusal goes uncounted."""

    KIND: ClassVar[str] = "refusal_summary"

    window_start_us: int
    window_end_us: int
    route: str
    reason: str
    status: int
    client_ip: str
    count: int
    first_ts_us: int
    last_ts_us: int
    sample_request_ids: list[str]

    def values(self) -> tuple[Any, ...]:
        return _values(self)


@dataclass(slots=True)
class AuthEvent:
    """A browser session's life (decision 014): login (succeeded or failed, with the reason),
    logout, refresh, expiry, revocation. ``session`` is a keyed hash, never the cookie value."""

    KIND: ClassVar[str] = "auth_event"

    event_id: str
    ts_us: int
    request_id: str
    user: str
    roles: list[str]
    client_ip: str
    event: str  # login | login_failed | logout | refresh | expired | revoked
    reason: str
    session: str

    def values(self) -> tuple[Any, ...]:
        return _values(self)


@dataclass(slots=True)
class SubjectBlock:
    """A data subject's block or unblock (6.5, 6.6): from then on requests touching the subject
    are refused, except for job functions the policy lets handle the verification."""

    KIND: ClassVar[str] = "subject_block"

    block_id: str
    ts_us: int
    actor: str
    action: str  # block | unblock
    subject: str  # as stored in the trail (a keyed hash where subject hashing is on)
    reason: str
    request_id: str
    label: str = ""  # the DPO's own name for the case (never the id: 5.3), shown by `subject list`

    def values(self) -> tuple[Any, ...]:
        return _values(self)


@dataclass(slots=True)
class AnomalyReview:
    """An investigator's review of an anomaly detection (9.1.6, 9.1.9): who looked at it, when,
    and what they concluded. The detection itself is never changed; the latest review of an
    anomaly is its state (decision 025)."""

    KIND: ClassVar[str] = "anomaly_review"

    review_id: str
    ts_us: int
    anomaly_id: str
    actor: str
    state: str  # reviewed
    comment: str
    request_id: str

    def values(self) -> tuple[Any, ...]:
        return _values(self)


@dataclass(slots=True)
class SubjectRequestChange:
    """A state change of a data subject's request in the register (6.3, 6.5, 6.6, 7.3; decision
    029): opened, its report issued, closed. Each record holds the request's whole state after
    the change, so the latest record of a request is the request. ``subject`` as stored (a keyed
    hash where subject hashing is on, 5.3); ``received`` and ``due`` are calendar dates (ISO) in
    the register's zone; ``act`` is the act of destruction (7.3) as canonical JSON, or ''."""

    KIND: ClassVar[str] = "subject_request"

    change_id: str
    ts_us: int
    request: str  # the register's id of the request
    state: str  # opened | report_issued | closed
    request_type: str  # access | block | correct | destroy | withdraw-consent
    subject: str
    label: str  # the DPO's name for the case (never the id: 5.3)
    ref: str  # the organisation's own reference (incoming letter's number)
    received: str
    due: str
    block_id: str  # the block made (or found in force) at opening; '' for none
    outcome: str  # on closing: what was done
    act: str
    actor: str
    reason: str
    request_id: str

    def values(self) -> tuple[Any, ...]:
        return _values(self)


_CLASSES: tuple[type[Any], ...] = (
    AccessEvent,
    Outcome,
    PermissionChange,
    RefusalSummary,
    AuthEvent,
    SubjectBlock,
    AnomalyReview,
    SubjectRequestChange,
)
_NAMES = {cls: tuple(f.name for f in fields(cls)) for cls in _CLASSES}
_GETTERS = {cls: attrgetter(*names) for cls, names in _NAMES.items()}

# Fields a record of version 2 does not have (added at the end of the canonical form in 3).
_ADDED_IN_3 = {"access": ("purpose",), "subject_block": ("label",)}

# (kind, record version) → the names of a record's values, in canonical order.
FIELDS: dict[tuple[str, int], tuple[str, ...]] = {
    (cls.KIND, RECORD_VERSION): names for cls, names in _NAMES.items()
} | {
    (cls.KIND, 2): tuple(n for n in names if n not in _ADDED_IN_3.get(cls.KIND, ()))
    for cls, names in _NAMES.items()
}
CHAINED_KINDS = frozenset(cls.KIND for cls in _CLASSES)
OUTCOME_FIELDS = (
    "status",
    "bytes_in",
    "bytes_out",
    "duration_us",
    "upstream_us",
    "outcome",
    "response_subjects",
    "response_count",
    "response_capped",
)


class UnpairedRecord(ValueError):
    """An access or outcome record the trail's readers could not pair. Written, it would make
    `audit verify` report an edited and a missing record where nothing was tampered with, so it
    is refused (the request fails closed): it is a bug in the code that made it."""


class Pairing:
    """The rule every access and outcome record the spool writes must keep, so that the store's
    one row per access (``join``, the shipper's ``Assembler``) gives back both records exactly
    (``gateway.audit.verify.records_of_access_row``):

    - an access written ``pending`` is allowed and holds no outcome values yet;
    - an access written complete is a refusal (denied), and no outcome record follows it;
    - an outcome record completes an access this writer accepted as pending, once.

    ``admit`` raises ``UnpairedRecord`` otherwise. ``gateway.audit.recorder.Recorder`` is the
    API that keeps the rule by construction; this check makes any other path fail loudly."""

    # Accesses begun and not yet completed: bounded by the requests in flight; an access whose
    # outcome never comes (its request died with an error) is forgotten past this many.
    LIMIT = 100_000

    def __init__(self) -> None:
        self._open: dict[str, None] = {}

    def admit(self, record: object) -> None:
        if isinstance(record, AccessEvent):
            if record.outcome == PENDING:
                if record.decision != "allow" or any(_outcome_values(record)):
                    raise UnpairedRecord("a pending access must be allowed, with no outcome yet")
                if len(self._open) >= self.LIMIT:
                    del self._open[next(iter(self._open))]
                self._open[record.event_id] = None
            elif record.decision != "deny" or record.outcome != COMPLETE:
                raise UnpairedRecord("an access complete in one record must be a refusal")
        elif isinstance(record, Outcome):
            if record.event_id not in self._open:
                raise UnpairedRecord("an outcome record must complete an access begun as pending")
            del self._open[record.event_id]


def _outcome_values(event: AccessEvent) -> tuple[int, ...]:
    return (event.status, event.bytes_in, event.bytes_out, event.duration_us, event.upstream_us)


def _values(obj: Any) -> tuple[Any, ...]:
    # Not dataclasses.astuple: that deep-copies every field (measured as the largest single
    # cost of the request path under load).
    values: tuple[Any, ...] = _GETTERS[type(obj)](obj)
    return values


def join(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Fold outcome records into their access records, in spool order of the access.

    An access still pending at the end of the input is yielded with outcome ``unknown``. Outcome
    records whose access is not in the input (it was in an earlier, already shipped segment)
    are yielded as they are, so nothing read is dropped. Other record kinds pass through.
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
                merge_outcome(access, rec)
        elif kind in CHAINED_KINDS:
            order.append(rec)
    for rec in order:
        if rec.get("outcome") == PENDING:
            rec["outcome"] = UNKNOWN
        yield rec


def merge_outcome(access: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Copy an outcome record's values into its access record; the outcome's own sequence number
    and hash go to ``outcome_seq``/``outcome_hash`` (the chain needs both records)."""
    for f in OUTCOME_FIELDS:
        if f in outcome:  # a first-release outcome has no response subjects
            access[f] = outcome[f]
    access["outcome_seq"] = outcome.get("seq", 0)
    access["outcome_hash"] = outcome.get("hash", "")
