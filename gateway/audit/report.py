"""A data subject's report (6.1.1, 6.3): what was done with one person's data, from the trail.

Built from the subject's access events of one period read page by page (never whole in memory:
only the aggregates and at most ``MAX_LISTED`` refusals and consultations are kept), the
subject's blocks, and the chain verification (gateway.audit.verify) of every instance for the
range the report covers. Purposes are the ones each access was decided for (records of version 3
name it; older ones get their route's declared purpose).

Consultations of the trail about the person (investigators' queries, reports, block look-ups:
category ``audit_log``, 9.2.6) are not accesses to their data: they are listed in a section of
their own ("the trail was consulted about you on …, by job function …") and counted apart. The
same period gives the same numbers: nothing outside it is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import query
from gateway.audit.checkpoint import Checkpoint
from gateway.audit.store.base import AuditStore, Row
from gateway.audit.verify import verify_store
from gateway.config.vocabulary import AUDIT_CATEGORY

MAX_LISTED = 200  # refusals listed one by one; all are counted

# The report's dimensions of allowed accesses, and their titles (the CLI's page and the
# console's show the same sections).
TITLES = {
    "category": "Categories of personal data processed",
    "purpose": "Purposes of processing",
    "job_function": "Job functions that processed the data",
    "action": "Operations",
    "system": "Systems",
}

# What a consultation looked up, by the route its record names (the admin API's, the CLI's and
# the console's, decision 025), in the words of the report's reader; other routes are shown as
# they are.
LOOKED_UP = {
    "admin:audit/subject": "who accessed the data",
    "admin:audit/subject-report": "a report like this one",
    "admin:subject-blocks": "block or unblock",
    "admin:subject-blocks/status": "whether the data is blocked",
    "console:subject-lookup": "the person's page opened (console)",
    "console:subject": "who accessed the data (console)",
    "console:subject-report": "a report like this one (console)",
    "console:subject-block-form": "whether the data is blocked (console)",
    "console:subject-block": "block or unblock (console)",
}


@dataclass
class _Group:
    count: int = 0
    first_us: int = 0
    last_us: int = 0

    def add(self, ts: int) -> None:
        self.count += 1
        self.first_us = ts if not self.first_us else min(self.first_us, ts)
        self.last_us = max(self.last_us, ts)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "first_us": self.first_us, "last_us": self.last_us}


@dataclass
class SubjectReport:
    purposes_of: Mapping[str, str]  # route → purpose
    accesses: int = 0
    refused: int = 0
    first_us: int = 0
    last_us: int = 0
    groups: dict[str, dict[str, _Group]] = field(default_factory=dict)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    consulted: int = 0
    consultations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: Row) -> None:
        ts = int(row["ts_us"])
        self.first_us = ts if not self.first_us else min(self.first_us, ts)
        self.last_us = max(self.last_us, ts)
        if row["category"] == AUDIT_CATEGORY:  # 9.2.6: the trail read about the person
            self.consulted += 1
            if len(self.consultations) < MAX_LISTED:
                self.consultations.append(
                    {k: row[k] for k in ("ts_us", "user", "roles", "action", "route", "decision")}
                    | {"rows": row["response_count"]}
                )
            return
        if row["decision"] != "allow":
            self.refused += 1
            if len(self.refusals) < MAX_LISTED:
                self.refusals.append(
                    {k: row[k] for k in ("ts_us", "user", "roles", "system", "category", "action")}
                    | {"reason": row["reason"], "status": row["status"]}
                )
            return
        self.accesses += 1
        purpose = str(row.get("purpose") or "") or self.purposes_of.get(str(row["route"]), "")
        keys = {
            "category": [str(row["category"])],
            "purpose": [purpose or "-"],
            "job_function": [str(r) for r in row["roles"]] or ["-"],
            "action": [str(row["action"])],
            "system": [str(row["system"])],
        }
        for dimension, values in keys.items():
            for v in values:
                self.groups.setdefault(dimension, {}).setdefault(v, _Group()).add(ts)


def build(
    store: AuditStore,
    forms: tuple[str, ...],
    *,
    since_us: int | None,
    until_us: int | None,
    purposes_of: Mapping[str, str],
    public_keys: Mapping[str, Ed25519PublicKey],
    live: Iterable[Checkpoint] = (),
) -> dict[str, Any]:
    """The report's content for [``since_us``, ``until_us``); ``forms``: the subject as stored
    (one per subject key)."""
    rep = SubjectReport(purposes_of)
    page = query.Page()
    filters = query.Filters(subject=forms, since_us=since_us, until_us=until_us)
    for row in query.events(store, filters, limit=query.MAX_EXPORT_ROWS, page=page):
        rep.add(row)
    blocks = [
        b
        for f in forms
        for b in query.blocks(store, f)
        if (since_us is None or int(b["ts_us"]) >= since_us)
        and (until_us is None or int(b["ts_us"]) < until_us)
    ]
    since = rep.first_us or None
    verdict = verify_store(store, public_keys, since_us=since, live=live)
    return {
        "period": {"since_us": since_us or 0, "until_us": until_us or 0},
        "rows": page.returned,
        "accesses": rep.accesses,
        "refused": rep.refused,
        "consultations": rep.consulted,
        "range": {"first_us": rep.first_us, "last_us": rep.last_us},
        "complete": not page.truncated and not page.timed_out,
        "by": {
            dim: {k: g.as_dict() for k, g in sorted(groups.items())}
            for dim, groups in sorted(rep.groups.items())
        },
        "refusals": rep.refusals,
        "consulted": rep.consultations,
        "blocks": [
            {k: b[k] for k in ("ts_us", "action", "actor", "reason", "label")}
            for b in sorted(blocks, key=lambda b: int(b["ts_us"]))
        ],
        "verify": {
            "ok": verdict.ok,
            "since_us": since or 0,
            "instances": [i.instance for i in verdict.instances],
            "problems": [str(p) for p in verdict.problems[:50]],
            "problem_count": len(verdict.problems),
        },
    }
