"""An evidence pack for an inspection of a period (9.1.9: control of the measures taken;
decision 028): the figures, computed from the store and the configuration in force.

Contract:
- ``figures(store, inputs)`` is a pure function of the store's rows *with times inside the
  period* (and, for state that evolves — reviews of anomalies, the register — the rows up to the
  period's end) and of ``inputs`` (the controls read from the configuration, the policy rules in
  force now, the public keys). No wall-clock time enters a figure; lists are ordered by their
  keys. The same period on an unchanged store gives the same figures, byte for byte in canonical
  JSON (``canonical``), which is what is signed and what `evidence verify` recomputes.
- Sections: ``controls`` (policy versions and their effective times, the routes with the reason
  declared for those without personal data, durability, TLS, the config's hash, alert rules);
  ``access`` (the roster per category at the start and at the end — the policy's rules at a time
  are the rules now with every later recorded change undone — and every permission change of the
  period with actor, reason and delta; break-glass sessions and their accesses and reviews);
  ``registration`` (records per day and instance, the `audit verify` result for the period with
  the checkpoints it rests on); ``detection`` (anomalies by kind and review state; the alert
  rules); ``trail_reads`` (who consulted the trail, when, what for); ``subject_requests`` (with
  deadlines met or missed at the period's end); ``retention`` (partitions dropped, 7.3).
- Lists are bounded (``MAX_LIST``); a cut list says so (``cut``) rather than pretend.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.checkpoint import Checkpoint, check_signature
from gateway.audit.store.base import AuditStore, Row
from gateway.audit.verify import WINDOW, Report, StoreChain, instances, verify_instance
from gateway.config.model import Config
from gateway.governance.deadlines import standing
from gateway.governance.requests import change_from_row, fold
from gateway.policy import tools as policy_tools

FORMAT = 1
MAX_LIST = 10_000
_QUARTER_US = 900 * 1_000_000  # every zone's offset is a multiple of 15 minutes
_ADDS = {"rule_added", "role_assigned", "purpose_added"}
_REMOVES = {"rule_removed", "role_unassigned", "purpose_removed"}


def canonical(value: Any) -> bytes:
    """The one byte form of a pack's JSON: sorted keys, no spaces (what is signed and compared)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Inputs:
    from_us: int
    to_us: int
    timezone: str  # the pack's days
    register_timezone: str  # the register's days (deadlines met or missed)
    due_soon_days: int
    controls: Mapping[str, Any]  # from the configuration (``controls_of``)
    policy_model: Path
    rules_now: frozenset[tuple[str, ...]]  # the policy's rules in force now
    version_now: str
    public_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def controls_of(cfg: Config, alert_rules: Path | None) -> dict[str, Any]:
    """The controls the configuration puts in force (9.1.9): what is protected and how."""
    routes = [
        {
            "name": r.name,
            "prefix": r.prefix,
            "methods": sorted(r.methods) if r.methods else ["*"],
            "system": r.system,
            "category": r.category,
            "purpose": r.purpose,
            "actions": dict(sorted(r.actions.items())),
            "subject_declared": r.subject is not None,
            "reason": r.reason if r.category == "none" else "",
        }
        for r in sorted(cfg.routes, key=lambda r: r.name)
    ]
    a = cfg.audit
    tls = {
        "proxy_listener": _tls(cfg.proxy_listen.tls),
        "admin_listener": _tls(cfg.admin_listen.tls),
        "upstreams": {
            name: ("https, verified" if url.startswith("https:") else "http (no TLS)")
            for name, url in sorted(cfg.upstreams.items())
        },
        "store": "TLS" if cfg.store is not None and cfg.store.secure else "no TLS",
    }
    alerts: dict[str, Any] = {"file": None, "sha256": None, "rules": []}
    if alert_rules is not None and alert_rules.is_file():
        doc = yaml.safe_load(alert_rules.read_text()) or {}
        rules = [
            {
                "alert": str(rule["alert"]),
                "severity": str((rule.get("labels") or {}).get("severity", "")),
                "for": str(rule.get("for", "")),
                "expr": " ".join(str(rule["expr"]).split()),
            }
            for group in doc.get("groups", [])
            for rule in group.get("rules", [])
            if "alert" in rule
        ]
        alerts = {
            "file": alert_rules.name,
            "sha256": _sha256_file(alert_rules),
            "rules": sorted(rules, key=lambda r: r["alert"]),
        }
    return {
        "config_sha256": _sha256_file(cfg.source),
        "instance_id": cfg.instance_id,
        "routes": routes,
        "durability": {
            "spool": a.durability,
            "batch_interval_ms": a.batch_interval_ms if a.durability == "batch" else 0,
            "on_spool_full": a.on_spool_full,
            "checkpoint_interval_seconds": a.checkpoint_interval_seconds,
            "subject_ids_hashed": a.subject_key_file is not None,
            "store": cfg.store.kind if cfg.store is not None else "none",
            "store_cluster": (cfg.store.cluster or "") if cfg.store is not None else "",
        },
        "tls": tls,
        "alerts": alerts,
    }


def _tls(tls: Any) -> str:
    return "TLS" if tls is not None else "no TLS"


def _rows(store: AuditStore, sql: str, p: Mapping[str, Any]) -> list[Row]:
    return store.select(sql.format(db=store.database), dict(p))


def _i(v: Any) -> int:
    return int(v) if v not in (None, "") else 0


def figures(store: AuditStore, inp: Inputs) -> dict[str, Any]:
    p = {"a": inp.from_us, "b": inp.to_us}
    changes = _changes_before(store, inp.to_us)
    return {
        "controls": {**inp.controls, "policy": _policy_versions(changes, inp)},
        "access": _access(store, p, changes, inp),
        "registration": _registration(store, p, inp),
        "detection": _detection(store, p, inp),
        "trail_reads": _trail_reads(store, p),
        "subject_requests": _requests(store, inp),
        "retention": _retention(store, p),
    }


def _changes_before(store: AuditStore, to_us: int) -> list[dict[str, Any]]:
    """Every change of access rights recorded before the period's end, each once."""
    rows = _rows(
        store,
        "SELECT change_id, ts_us, actor, kind, role, user, rule_before, rule_after, "
        "policy_version_before, policy_version_after, reason, source "
        "FROM {db}.permission_changes WHERE ts_us < %(b)s",
        {"b": to_us},
    )
    out = [{**r, "ts_us": _i(r["ts_us"])} for r in rows]
    return sorted(out, key=lambda r: (r["ts_us"], r["change_id"]))


def _later_changes(store: AuditStore, since_us: int) -> list[dict[str, Any]]:
    rows = _rows(
        store,
        "SELECT change_id, ts_us, kind, rule_before, rule_after "
        "FROM {db}.permission_changes WHERE ts_us >= %(a)s",
        {"a": since_us},
    )
    return sorted(
        ({**r, "ts_us": _i(r["ts_us"])} for r in rows), key=lambda r: (r["ts_us"], r["change_id"])
    )


def _policy_versions(changes: list[dict[str, Any]], inp: Inputs) -> dict[str, Any]:
    """The policy version in force at the start, and each that took effect during the period."""
    swaps = [c for c in changes if c["policy_version_before"] != c["policy_version_after"]]
    before = [c for c in swaps if c["ts_us"] < inp.from_us]
    during = [c for c in swaps if c["ts_us"] >= inp.from_us]
    if before:
        at_start = before[-1]["policy_version_after"]
    elif during:
        at_start = during[0]["policy_version_before"]
    else:
        at_start = ""  # no change recorded up to the end: the version of the rules reconstructed
    effective: list[dict[str, Any]] = []
    for c in during:
        if not effective or effective[-1]["version"] != c["policy_version_after"]:
            effective.append(
                {
                    "version": c["policy_version_after"],
                    "from_us": c["ts_us"],
                    "actor": c["actor"],
                    "source": c["source"],
                    "reason": c["reason"],
                }
            )
    return {"version_at_start": at_start, "took_effect": effective}


def rules_at(
    rules_now: frozenset[tuple[str, ...]], later: Iterable[Mapping[str, Any]]
) -> set[tuple[str, ...]]:
    """The policy's rules before every change in ``later`` (newest undone first)."""
    rules = set(rules_now)
    for c in sorted(later, key=lambda c: (c["ts_us"], c["change_id"]), reverse=True):
        if c["kind"] in _ADDS and c["rule_after"]:
            rules.discard(tuple(c["rule_after"].split(", ")))
        elif c["kind"] in _REMOVES and c["rule_before"]:
            rules.add(tuple(c["rule_before"].split(", ")))
    return rules


def roster(model: Path, rules: Iterable[tuple[str, ...]]) -> list[dict[str, Any]]:
    """``gateway.policy.tools.roster`` of a set of rules (written as a policy file of its own)."""
    with tempfile.TemporaryDirectory(prefix="pdgw-roster-") as tmp:
        policy = Path(tmp) / "policy.csv"
        policy.write_text("".join(", ".join(r) + "\n" for r in sorted(rules)))
        return policy_tools.roster(model, policy)


def _access(
    store: AuditStore, p: Mapping[str, int], changes: list[dict[str, Any]], inp: Inputs
) -> dict[str, Any]:
    later_than_start = _later_changes(store, inp.from_us)
    later_than_end = [c for c in later_than_start if c["ts_us"] >= inp.to_us]
    start = rules_at(inp.rules_now, later_than_start)
    end = rules_at(inp.rules_now, later_than_end)
    during = [c for c in changes if c["ts_us"] >= inp.from_us]
    listed = [
        {
            "ts_us": c["ts_us"],
            "change_id": c["change_id"],
            "actor": c["actor"],
            "kind": c["kind"],
            "role": c["role"],
            "user": c["user"],
            "removed": c["rule_before"],
            "added": c["rule_after"],
            "reason": c["reason"],
            "source": c["source"],
        }
        for c in during
    ]
    glass_changes = [c for c in listed if c["source"] == "break_glass"]
    glass_rows = _rows(
        store,
        "SELECT user, count() AS n FROM {db}.access_events WHERE ts_us >= %(a)s "
        "AND ts_us < %(b)s AND reason = 'break_glass' GROUP BY user",
        p,
    )
    return {
        "roster_at_start": roster(inp.policy_model, start),
        "roster_at_end": roster(inp.policy_model, end),
        "rules_at_start": len(start),
        "rules_at_end": len(end),
        "permission_changes": listed[:MAX_LIST],
        "permission_changes_count": len(listed),
        "permission_changes_by_kind": dict(sorted(Counter(c["kind"] for c in listed).items())),
        "break_glass": {
            "sessions": glass_changes,
            "accesses_by_user": {
                str(r["user"]): _i(r["n"]) for r in sorted(glass_rows, key=lambda r: str(r["user"]))
            },
        },
    }


_RECORD_TABLES = (
    ("permission_change_records", "ts_us"),
    ("refusal_summaries", "window_end_us"),  # written when its window has ended
    ("auth_events", "ts_us"),
    ("subject_blocks", "ts_us"),
    ("anomaly_reviews", "ts_us"),
    ("subject_requests", "ts_us"),
)


def _registration(store: AuditStore, p: Mapping[str, int], inp: Inputs) -> dict[str, Any]:
    zone = zoneinfo.ZoneInfo(inp.timezone)
    per: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"accesses": 0, "allowed": 0, "denied": 0, "records": 0}
    )

    def day(quarter: int) -> str:
        return dt.datetime.fromtimestamp(quarter * _QUARTER_US / 1e6, zone).date().isoformat()

    for r in _rows(
        store,
        "SELECT instance, intDiv(ts_us, 900000000) AS q, count() AS n, "
        "sum(decision = 'allow') AS allowed, sum(outcome_seq > 0) AS outcomes "
        "FROM {db}.access_events WHERE ts_us >= %(a)s AND ts_us < %(b)s GROUP BY instance, q",
        p,
    ):
        cell = per[(str(r["instance"]), day(_i(r["q"])))]
        n, allowed = _i(r["n"]), _i(r["allowed"])
        cell["accesses"] += n
        cell["allowed"] += allowed
        cell["denied"] += n - allowed
        cell["records"] += n + _i(r["outcomes"])
    for table, ts in _RECORD_TABLES:
        for r in _rows(
            store,
            f"SELECT instance, intDiv({ts}, 900000000) AS q, count() AS n FROM {{db}}.{table} "
            f"WHERE {ts} >= %(a)s AND {ts} < %(b)s GROUP BY instance, q",
            p,
        ):
            per[(str(r["instance"]), day(_i(r["q"])))]["records"] += _i(r["n"])
    rows: list[dict[str, Any]] = [
        {"instance": i, "day": d, **v} for (i, d), v in sorted(per.items())
    ]
    totals = {
        k: sum(v[k] for v in per.values()) for k in ("accesses", "allowed", "denied", "records")
    }
    return {"per_day": rows, "totals": totals, "verify": _verify(store, inp)}


def _cp(cp: Checkpoint | None) -> dict[str, Any] | None:
    if cp is None:
        return None
    return {"seq": cp.seq, "ts_us": cp.ts_us, "head": cp.head, "key_id": cp.key_id}


class _PeriodChain(StoreChain):
    """An instance's chain as it stood at the period's end: up to its last record written in the
    period, with the checkpoints signed before the end. What is written later — records, and the
    checkpoints an idle instance signs only when it writes again — cannot change the result."""

    def __init__(self, store: AuditStore, instance: str, to_us: int) -> None:
        super().__init__(store, instance)
        self.to_us = to_us

    def bounds(self) -> tuple[int, int]:
        lo, _ = super().bounds()
        hi = 0
        p = {"i": self.instance, "b": self.to_us}
        for sql in (
            "SELECT max(greatest(seq, outcome_seq)) AS hi, count() AS n FROM {db}.access_events "
            "WHERE instance = %(i)s AND record_v >= 2 AND ts_us < %(b)s",
            *(
                f"SELECT max(seq) AS hi, count() AS n FROM {{db}}.{table} "
                f"WHERE instance = %(i)s AND record_v >= 2 AND {ts} < %(b)s"
                for table, ts in _RECORD_TABLES
            ),
        ):
            row = _rows(self.store, sql, p)[0]
            if _i(row["n"]):
                hi = max(hi, _i(row["hi"]))
        return (lo, hi) if hi else (0, 0)

    def checkpoints(self) -> list[Checkpoint]:
        return [cp for cp in super().checkpoints() if cp.ts_us < self.to_us]


def _verify(store: AuditStore, inp: Inputs) -> dict[str, Any]:
    """`audit verify` for the period: each instance's chain from the newest signed checkpoint at
    or before the start (or from its first record) to its last record of the period, checked
    against every checkpoint signed up to the end. The pack's own signature then covers each
    instance's head at the period's end (``head``), like a checkpoint."""
    report = Report()
    for name in instances(store):
        chain = _PeriodChain(store, name, inp.to_us)
        verify_instance(chain, inp.public_keys, report, inp.from_us, None, WINDOW)
    out = []
    for res in sorted(report.instances, key=lambda r: r.instance):
        if not res.last_seq and not res.first_seq:
            continue  # nothing of this instance up to the period's end
        chain = _PeriodChain(store, res.instance, inp.to_us)
        valid = [cp for cp in chain.checkpoints() if check_signature(cp, inp.public_keys) is None]
        before = [cp for cp in valid if cp.ts_us <= inp.from_us]
        head = chain.records(res.last_seq, res.last_seq) if res.last_seq else []
        out.append(
            {
                "instance": res.instance,
                "first_seq": res.first_seq,
                "last_seq": res.last_seq,
                "head": str(head[0]["hash"]) if head else "",
                "records_checked": res.records,
                "anchored": res.anchored,
                "checkpoint_at_start": _cp(max(before, key=lambda c: c.seq) if before else None),
                "checkpoints_in_period": sum(1 for cp in valid if cp.ts_us > inp.from_us),
            }
        )
    problems = [
        {"instance": pr.instance, "seq": pr.seq, "kind": pr.kind, "detail": pr.detail}
        for pr in sorted(report.problems, key=lambda pr: (pr.instance, pr.seq, pr.kind))
    ]
    return {
        "ok": report.ok,
        "instances": out,
        "problems": problems[:MAX_LIST],
        "problems_count": len(problems),
        "gaps": [pr for pr in problems if pr["kind"] == "missing"][:MAX_LIST],
    }


def _detection(store: AuditStore, p: Mapping[str, int], inp: Inputs) -> dict[str, Any]:
    found = _rows(
        store,
        "SELECT anomaly_id, any(kind) AS kind, any(job_function) AS job_function "
        "FROM {db}.anomalies WHERE window_start_us >= %(a)s AND window_start_us < %(b)s "
        "GROUP BY anomaly_id",
        p,
    )
    reviews = {
        str(r["anomaly_id"]): r
        for r in _rows(
            store,
            "SELECT anomaly_id, argMax(state, ts_us) AS state, count() AS n "
            "FROM {db}.anomaly_reviews WHERE ts_us < %(b)s GROUP BY anomaly_id",
            p,
        )
    }
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"detected": 0, "reviewed": 0})
    for r in found:
        cell = by_kind[str(r["kind"])]
        cell["detected"] += 1
        if str(r["anomaly_id"]) in reviews:
            cell["reviewed"] += 1
    return {
        "anomalies_by_kind": [
            {"kind": k, **v, "not_reviewed": v["detected"] - v["reviewed"]}
            for k, v in sorted(by_kind.items())
        ],
        "anomalies": len(found),
        "alert_rules": len(inp.controls.get("alerts", {}).get("rules", [])),
    }


def _trail_reads(store: AuditStore, p: Mapping[str, int]) -> dict[str, Any]:
    rows = _rows(
        store,
        "SELECT ts_us, event_id, user, roles, auth, route, action, purpose, query, decision, "
        "status, reason FROM {db}.access_events WHERE ts_us >= %(a)s AND ts_us < %(b)s "
        "AND category = 'audit_log'",
        p,
    )
    reads: list[dict[str, Any]] = sorted(
        (
            {
                "ts_us": _i(r["ts_us"]),
                "event_id": str(r["event_id"]),
                "user": str(r["user"]),
                "roles": sorted(r["roles"]),
                "auth": str(r["auth"]),
                "route": str(r["route"]),
                "action": str(r["action"]),
                "purpose": str(r["purpose"]),
                "query": str(r["query"]),
                "decision": str(r["decision"]),
                "status": _i(r["status"]),
            }
            for r in rows
        ),
        key=lambda r: (r["ts_us"], r["event_id"]),
    )
    by_user: dict[str, dict[str, int]] = defaultdict(lambda: {"allowed": 0, "refused": 0})
    for r in reads:
        by_user[str(r["user"] or "-")]["allowed" if r["decision"] == "allow" else "refused"] += 1
    return {
        "count": len(reads),
        "by_user": [{"user": u, **v} for u, v in sorted(by_user.items())],
        "reads": reads[:MAX_LIST],
        "cut": len(reads) > MAX_LIST,
    }


def _requests(store: AuditStore, inp: Inputs) -> dict[str, Any]:
    from gateway.audit.events import FIELDS, RECORD_VERSION

    names = FIELDS[("subject_request", RECORD_VERSION)]
    rows = _rows(
        store,
        f"SELECT {', '.join(names)} FROM {{db}}.subject_requests WHERE ts_us < %(b)s",
        {"b": inp.to_us},
    )
    zone = zoneinfo.ZoneInfo(inp.register_timezone)

    def day(us: int) -> dt.date:
        return dt.datetime.fromtimestamp(us / 1e6, zone).date()

    first, last = day(inp.from_us), day(inp.to_us - 1)
    out = []
    for r in fold(change_from_row(row) for row in rows).values():
        closed = day(r.closed_us) if r.closed_us else None
        if dt.date.fromisoformat(r.received) > last or (closed is not None and closed < first):
            continue
        mark = standing(dt.date.fromisoformat(r.due), last, closed, soon_days=inp.due_soon_days)
        out.append(
            {
                "request": r.request,
                "type": r.request_type,
                "label": r.label,
                "ref": r.ref,
                "subject": r.subject,
                "received": r.received,
                "due": r.due,
                "blocked": bool(r.block_id),
                "report_issued_us": r.report_issued_us,
                "closed_us": r.closed_us,
                "outcome": r.outcome,
                "act": orjson.loads(r.act) if r.act else None,
                "standing": mark.state,  # at the period's end
            }
        )
    out.sort(key=lambda r: (r["received"], r["request"]))
    return {
        "requests": out,
        "by_standing": dict(sorted(Counter(r["standing"] for r in out).items())),
    }


def _retention(store: AuditStore, p: Mapping[str, int]) -> list[dict[str, Any]]:
    rows = _rows(
        store,
        "SELECT toUInt32(ts) AS t, actor, table_name, partition, rows, toString(cutoff) AS cutoff, "
        "reason FROM {db}.retention_actions WHERE toUInt32(ts) >= intDiv(%(a)s, 1000000) "
        "AND toUInt32(ts) < intDiv(%(b)s, 1000000)",
        p,
    )
    out = [
        {
            "ts_us": _i(r["t"]) * 1_000_000,
            "actor": str(r["actor"]),
            "table": str(r["table_name"]),
            "partition": str(r["partition"]),
            "rows": _i(r["rows"]),
            "cutoff": str(r["cutoff"]),
            "reason": str(r["reason"]),
        }
        for r in rows
    ]
    return sorted(out, key=lambda r: (r["ts_us"], r["table"], r["partition"]))


DOMAIN = b"pd-gateway evidence pack v1\n"


def pack(inp: Inputs, figures_: Mapping[str, Any], made: Mapping[str, Any]) -> dict[str, Any]:
    """The pack: the period, its figures and who made it when (``made`` is the only part that
    differs between two packs of the same period; `evidence verify` compares the figures)."""
    return {
        "kind": "pd-gateway evidence pack",
        "format": FORMAT,
        "period": {"from_us": inp.from_us, "to_us": inp.to_us, "timezone": inp.timezone},
        "figures": dict(figures_),
        "made": dict(made),
    }


def differences(old: Any, new: Any, path: str = "figures") -> list[str]:
    """Where two figures differ, as paths (``figures.registration.totals.accesses: 12 → 13``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                out.append(f"{path}.{key}: {'added' if key not in old else 'gone'}")
            else:
                out += differences(old[key], new[key], f"{path}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} entries → {len(new)}"]
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += differences(a, b, f"{path}[{i}]")
        return out
    if old != new:
        return [f"{path}: {_short(old)} → {_short(new)}"]
    return []


def _short(v: Any) -> str:
    text = orjson.dumps(v).decode()
    return text if len(text) <= 80 else text[:77] + "..."
