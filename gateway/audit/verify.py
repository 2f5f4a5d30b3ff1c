"""`pd-gateway audit verify`: recompute each instance's chain from the store and check it against
the signed checkpoints (docs/decisions/012-hash-chain.md).

What is found, by kind (each with its instance and sequence number):
- ``missing``: sequence numbers absent from the store (a deletion, or records not shipped yet);
- ``duplicate``: a sequence number held by two rows (an insertion);
- ``hash_mismatch``: a record whose content does not give its hash (an edit, or rows reordered or
  inserted before it);
- ``checkpoint_mismatch``: the chain up to a signed checkpoint is self-consistent but not what the
  gateway signed (rows rewritten and every later hash recomputed);
- ``truncated``: a signed checkpoint (in the store, or the live one from the gateway) names a
  sequence number beyond the newest record in the store;
- ``bad_checkpoint``: a checkpoint whose signature does not verify with the given public keys;
- ``beyond_live_head``: an access numbered past the live head of the gateway that wrote it yet
  timed more than IN_FLIGHT_US before that head was signed. Records written after the head are
  what a running gateway does (the head is signed every checkpoint interval), not a problem; an
  access is timed when its request arrived and numbered once it is decided, so a request in flight
  when the head was signed may be numbered after it, within that bound.

Rows are read in windows of sequence numbers, so a long range is streamed, not held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import chain
from gateway.audit.checkpoint import Checkpoint, check_signature
from gateway.audit.events import FIELDS, OUTCOME_FIELDS, PENDING, RECORD_VERSION
from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore

WINDOW = 20_000  # sequence numbers per query
# A request numbered this long after it arrived is not one in flight (beyond_live_head).
IN_FLIGHT_US = 60_000_000
# Told after each window: the instance, the sequence number checked up to, and the last one.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Problem:
    instance: str
    seq: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.instance} #{self.seq}: {self.kind}: {self.detail}"


@dataclass
class InstanceResult:
    instance: str
    first_seq: int = 0
    last_seq: int = 0
    records: int = 0
    checkpoints: int = 0
    anchored: bool = True  # the first record checked links to genesis or a signed checkpoint


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    instances: list[InstanceResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _int(v: Any) -> int:
    return int(v) if v not in (None, "") else 0


# Tables of chained records other than access_events (whose rows hold two records each).
CHAINED_TABLES = {
    "permission_change": "permission_change_records",
    "refusal_summary": "refusal_summaries",
    "auth_event": "auth_events",
    "subject_block": "subject_blocks",
    "anomaly_review": "anomaly_reviews",
    "subject_request": "subject_requests",
}

_INT_COLUMNS = {"n", "lo", "hi"} | {
    name
    for t in (
        schema.ACCESS_EVENTS,
        schema.PERMISSION_CHANGE_RECORDS,
        schema.REFUSAL_SUMMARIES,
        schema.AUTH_EVENTS,
        schema.SUBJECT_BLOCKS,
        schema.ANOMALY_REVIEWS,
        schema.SUBJECT_REQUESTS,
    )
    for name, kind in t.columns
    if kind.startswith(("UInt", "Int"))
}


def _typed(row: Mapping[str, Any]) -> dict[str, Any]:
    """Column values as the writer had them (chdb's JSON output quotes 64-bit integers)."""
    return {k: _int(v) if k in _INT_COLUMNS else v for k, v in row.items()}


def records_of_access_row(row: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The chained records an access_events row holds: the access record as it was written
    (an allowed access was written pending, its outcome values came in its own record) and,
    if there was one, the outcome record."""
    r = _typed(row)
    access = {**r, "kind": "access", "v": r["record_v"]}
    if r["decision"] == "allow":
        access.update(status=0, bytes_in=0, bytes_out=0, duration_us=0, upstream_us=0)
        access["outcome"] = PENDING
    yield access
    if r["outcome_seq"]:
        outcome = {f: r[f] for f in OUTCOME_FIELDS}
        outcome.update(
            kind="outcome",
            v=r["record_v"],
            instance=r["instance"],
            seq=r["outcome_seq"],
            hash=r["outcome_hash"],
            event_id=r["event_id"],
        )
        yield outcome


def _columns(kind: str) -> str:
    names = set(FIELDS[(kind, RECORD_VERSION)]) | {"instance", "seq", "hash", "record_v"}
    if kind == "access":
        names |= {"outcome_seq", "outcome_hash", *OUTCOME_FIELDS}
    if kind == "permission_change":
        names.discard("change_kind")
        names.add("kind AS change_kind")
    return ", ".join(sorted(names))


class StoreChain:
    """Chained records of one instance, read from the store by ranges of sequence numbers."""

    def __init__(self, store: AuditStore, instance: str) -> None:
        self.store = store
        self.instance = instance
        self.db = store.database

    def bounds(self) -> tuple[int, int]:
        """The lowest and highest sequence number of the instance's chained records in the store."""
        lo, hi = 0, 0
        for table, top in (
            ("access_events", "greatest(max(seq), max(outcome_seq))"),
            *((t, "max(seq)") for t in CHAINED_TABLES.values()),
        ):
            rows = self.store.select(
                f"SELECT count() AS n, min(seq) AS lo, {top} AS hi FROM {self.db}.{table} "
                "WHERE instance = %(i)s AND record_v >= 2",
                {"i": self.instance},
            )
            r = _typed(rows[0]) if rows else {}
            if _int(r.get("n")):
                lo = _int(r["lo"]) if not lo else min(lo, _int(r["lo"]))
                hi = max(hi, _int(r["hi"]))
        return lo, hi

    def records(self, first: int, last: int) -> list[dict[str, Any]]:
        """Every chained record with first <= seq <= last, sorted by seq."""
        out: list[dict[str, Any]] = []
        p = {"i": self.instance, "a": first, "b": last}
        rows = self.store.select(
            f"SELECT {_columns('access')} FROM {self.db}.access_events WHERE instance = %(i)s "
            "AND record_v >= 2 AND ((seq >= %(a)s AND seq <= %(b)s) OR "
            "(outcome_seq >= %(a)s AND outcome_seq <= %(b)s))",
            p,
        )
        for row in rows:
            out += [r for r in records_of_access_row(row) if first <= r["seq"] <= last]
        for kind, table in CHAINED_TABLES.items():
            for row in self.store.select(
                f"SELECT {_columns(kind)} FROM {self.db}.{table} WHERE instance = %(i)s "
                "AND record_v >= 2 AND seq >= %(a)s AND seq <= %(b)s",
                p,
            ):
                r = _typed(row)
                out.append({**r, "kind": kind, "v": r["record_v"]})
        out.sort(key=lambda r: r["seq"])
        return out

    def checkpoints(self) -> list[Checkpoint]:
        rows = self.store.select(
            "SELECT instance, seq, head, ts_us, key_id, signature "
            f"FROM {self.db}.chain_checkpoints WHERE instance = %(i)s ORDER BY seq, ts_us",
            {"i": self.instance},
        )
        return [Checkpoint.from_mapping(_typed(r)) for r in rows]


def instances(store: AuditStore) -> list[str]:
    names: set[str] = set()
    for table in ("access_events", *CHAINED_TABLES.values(), "chain_checkpoints"):
        extra = "" if table == "chain_checkpoints" else " WHERE record_v >= 2"
        rows = store.select(f"SELECT DISTINCT instance FROM {store.database}.{table}{extra}")
        names |= {str(r["instance"]) for r in rows}
    return sorted(names)


def verify_store(
    store: AuditStore,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    only: Iterable[str] | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    live: Iterable[Checkpoint] = (),
    window: int = WINDOW,
    progress: Progress | None = None,
) -> Report:
    """Verify every instance (or ``only`` those). ``since_us``: start at the newest signed
    checkpoint at or before it; ``until_us``: stop at the first signed checkpoint at or after it
    (the period is covered up to a signed head; the live head is then not compared)."""
    report = Report()
    live_by_instance = {cp.instance: cp for cp in live}
    # A chain with a live head and nothing in the store is checked too: all of it is missing.
    names = sorted(set(only)) if only else sorted({*instances(store), *live_by_instance})
    for name in names:
        source = StoreChain(store, name)
        verify_instance(
            source,
            public_keys,
            report,
            since_us,
            None if until_us is not None else live_by_instance.get(name),
            window,
            until_us=until_us,
            progress=progress,
        )
    return report


def verify_instance(
    source: StoreChain,
    public_keys: Mapping[str, Ed25519PublicKey],
    report: Report,
    since_us: int | None,
    live: Checkpoint | None,
    window: int,
    *,
    until_us: int | None = None,
    progress: Progress | None = None,
) -> None:
    name = source.instance
    result = InstanceResult(name)
    report.instances.append(result)

    def problem(seq: int, kind: str, detail: str) -> None:
        report.problems.append(Problem(name, seq, kind, detail))

    checkpoints: list[Checkpoint] = []
    for cp in [*source.checkpoints(), *([live] if live else [])]:
        bad = check_signature(cp, public_keys)
        if bad:
            problem(cp.seq, "bad_checkpoint", bad)
        else:
            checkpoints.append(cp)
    result.checkpoints = len(checkpoints)
    by_seq: dict[int, list[Checkpoint]] = {}
    for cp in checkpoints:
        by_seq.setdefault(cp.seq, []).append(cp)

    lo, hi = source.bounds()
    if until_us is not None:
        later = [cp for cp in checkpoints if cp.ts_us >= until_us]
        if later:
            stop = min(cp.seq for cp in later)
            hi = min(hi, stop)
            checkpoints = [cp for cp in checkpoints if cp.seq <= stop]
    start, prev = lo, None
    if since_us is not None:
        earlier = [cp for cp in checkpoints if cp.ts_us <= since_us]
        if earlier:
            anchor = max(earlier, key=lambda c: c.seq)
            start, prev = anchor.seq + 1, anchor.head
    elif lo == 1:
        prev = chain.GENESIS
    elif lo > 1 and (lo - 1) in by_seq:
        prev = by_seq[lo - 1][0].head
    result.anchored = prev is not None
    if start == 0:
        start = 1 if checkpoints else 0
    if hi and start:
        result.first_seq = start
    expected = start
    seq = start
    beyond: int | None = None  # the first access past the live head timed well before it
    while hi and seq <= hi:
        last = min(hi, seq + window - 1)
        for rec in source.records(seq, last):
            n = rec["seq"]
            result.records += 1
            if n < expected:
                problem(n, "duplicate", "a second record with this sequence number (inserted)")
                continue
            if n > expected:
                missing = f"{expected}" if n == expected + 1 else f"{expected}-{n - 1}"
                problem(
                    expected,
                    "missing",
                    f"records {missing} are not in the store (deleted, or not shipped yet)",
                )
                prev = None
            canon = chain.canonical_of(rec)
            if prev is not None and chain.link(prev, canon) != rec["hash"]:
                problem(
                    n,
                    "hash_mismatch",
                    "the record does not give its hash (edited, or "
                    "records before it were reordered or inserted)",
                )
            prev = rec["hash"]  # resynchronise: every later problem is found on its own
            for cp in by_seq.get(n, []):
                if cp.head != rec["hash"]:
                    problem(
                        n,
                        "checkpoint_mismatch",
                        "the chain up to here is not the one the "
                        "gateway signed (rows rewritten and hashes recomputed)",
                    )
            expected = n + 1
            result.last_seq = n
            ts = rec.get("ts_us")
            if beyond is None and live is not None and n > live.seq and ts is not None:
                beyond = n if int(ts) < live.ts_us - IN_FLIGHT_US else None
        seq = last + 1
        if progress is not None:
            progress(name, last, hi)
    newest = max((cp.seq for cp in checkpoints), default=0)
    if newest > result.last_seq and (newest >= start or not hi):
        problem(
            newest,
            "truncated",
            f"a signed checkpoint names #{newest}; the store ends at #{result.last_seq} "
            "(records deleted from the end, or not shipped yet)",
        )
    if beyond is not None:
        problem(
            beyond,
            "beyond_live_head",
            "an access numbered past the gateway's live head, timed before that head was signed",
        )
