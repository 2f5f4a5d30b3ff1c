"""An evidence pack as one self-contained, printable HTML page (9.1.9; decision 028).

A rendering of the signed JSON and nothing else: the same JSON gives the same bytes (times in
the pack's own zone, no time of rendering), so `evidence verify` renders it again and compares.
No scripts, no external resources; every value is HTML-escaped. Each printed page's footer
names the JSON's SHA-256, so a paper copy can be matched with the signed file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from html import escape
from typing import Any

_CSS = """
body { font: 10pt/1.35 "DejaVu Sans", Arial, sans-serif; margin: 1.5em; color: #111; }
h1 { font-size: 16pt; margin-bottom: 0.2em; } h2 { font-size: 13pt; margin-top: 1.4em; }
h3 { font-size: 11pt; margin-top: 1em; }
table { border-collapse: collapse; width: 100%; margin: 0.4em 0; }
th, td { border: 1px solid #999; padding: 2px 5px; text-align: left; vertical-align: top; }
th { background: #eee; } .ok { color: #060; } .bad { color: #a00; font-weight: bold; }
.meta td:first-child { width: 16em; font-weight: bold; } code { font-size: 8.5pt; }
footer { margin-top: 2em; font-size: 8pt; color: #444; }
@media print {
  body { margin: 0; } h2 { page-break-after: avoid; } tr { page-break-inside: avoid; }
}
"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    if not rows:
        return f"<table><tr>{head}</tr><tr><td colspan={len(headers)}>none</td></tr></table>"
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(pack: dict[str, Any], data: bytes) -> str:
    """``data``: the pack's canonical JSON bytes (its SHA-256 is printed)."""
    period, f = pack["period"], pack["figures"]
    tz = zoneinfo.ZoneInfo(period["timezone"])

    def t(us: int) -> str:
        if not us:
            return "—"
        return dt.datetime.fromtimestamp(us / 1e6, tz).strftime("%Y-%m-%d %H:%M:%S")

    digest = hashlib.sha256(data).hexdigest()
    made = pack["made"]
    c, acc, reg, det = f["controls"], f["access"], f["registration"], f["detection"]
    ver = reg["verify"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Evidence pack {escape(t(period['from_us']))} – {escape(t(period['to_us']))}"
        "</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Evidence pack: control of the measures taken (9.1.9)</h1>",
        '<table class="meta">',
        f"<tr><td>Period</td><td>{escape(t(period['from_us']))} to "
        f"{escape(t(period['to_us']))} (end excluded), {escape(period['timezone'])}</td></tr>",
        f"<tr><td>Made</td><td>{escape(t(made['at_us']))} by {escape(made['by'])} "
        f"(gateway {escape(made['instance'])}, request {escape(made['request_id'])})</td></tr>",
        f"<tr><td>Configuration SHA-256</td><td><code>{escape(c['config_sha256'])}</code></td>"
        "</tr>",
        f"<tr><td>This pack's JSON SHA-256</td><td><code>{digest}</code></td></tr>",
        "<tr><td>Registration verified</td><td>"
        + (
            '<span class="ok">yes: every chain intact for the period</span>'
            if ver["ok"]
            else f'<span class="bad">NO: {ver["problems_count"]} problem(s)</span>'
        )
        + "</td></tr></table>",
        "<h2>1. Controls in force</h2>",
        "<h3>Policy versions (hash of the policy files)</h3>",
        _table(
            ["version", "in force from", "by", "source", "reason"],
            [
                [
                    c["policy"]["version_at_start"] or "(no change recorded)",
                    "the period's start",
                    "",
                    "",
                    "",
                ]
            ]
            + [
                [v["version"], t(v["from_us"]), v["actor"], v["source"], v["reason"]]
                for v in c["policy"]["took_effect"]
            ],
        ),
        "<h3>Routes (what is protected)</h3>",
        _table(
            [
                "route",
                "prefix",
                "methods",
                "system",
                "category",
                "purpose",
                "no personal data: why",
            ],
            [
                [
                    r["name"],
                    r["prefix"],
                    ",".join(r["methods"]),
                    r["system"],
                    r["category"],
                    r["purpose"],
                    (r["reason"] or "NO REASON DECLARED") if r["category"] == "none" else "",
                ]
                for r in c["routes"]
            ],
        ),
        "<h3>Durability and transport</h3>",
        _table(
            ["setting", "value"],
            [[k, v] for k, v in c["durability"].items()]
            + [[f"tls.{k}", v] for k, v in c["tls"].items() if k != "upstreams"]
            + [[f"tls.upstream {k}", v] for k, v in c["tls"]["upstreams"].items()],
        ),
        "<h2>2. Who could access each category (9.2.3, 9.3.12) and what changed (9.2.7)</h2>",
    ]
    for label, key in (("At the start", "roster_at_start"), ("At the end", "roster_at_end")):
        parts += [
            f"<h3>{label} of the period</h3>",
            _table(
                ["system", "category", "action", "purpose", "job functions", "mapped members"],
                [
                    [
                        r["system"],
                        r["category"],
                        r["action"],
                        r["purpose"],
                        ", ".join(r["job_functions"]),
                        ", ".join(r["mapped_members"]) or "—",
                    ]
                    for r in acc[key]
                ],
            ),
        ]
    parts += [
        f"<h3>Changes of access rights ({acc['permission_changes_count']})</h3>",
        _table(
            ["time", "by", "kind", "removed", "added", "reason", "source"],
            [
                [
                    t(p["ts_us"]),
                    p["actor"],
                    p["kind"],
                    p["removed"],
                    p["added"],
                    p["reason"],
                    p["source"],
                ]
                for p in acc["permission_changes"]
            ],
        ),
        "<h3>Break-glass</h3>",
        _table(
            ["time", "user", "event", "justification"],
            [
                [t(s["ts_us"]), s["user"] or s["actor"], s["kind"], s["reason"]]
                for s in acc["break_glass"]["sessions"]
            ],
        ),
        _table(
            ["user", "accesses under break-glass"],
            [[u, n] for u, n in acc["break_glass"]["accesses_by_user"].items()],
        ),
        "<h2>3. Registration of every action (9.1.8)</h2>",
        _table(
            ["day", "instance", "accesses", "allowed", "refused", "chained records"],
            [
                [r["day"], r["instance"], r["accesses"], r["allowed"], r["denied"], r["records"]]
                for r in reg["per_day"]
            ],
        ),
        f"<p>Totals: {reg['totals']['accesses']} accesses ({reg['totals']['allowed']} allowed, "
        f"{reg['totals']['denied']} refused), {reg['totals']['records']} chained records.</p>",
        "<h3>audit verify for the period, and the signed checkpoints it rests on</h3>",
        "<p>Each instance's chain is recomputed from the newest checkpoint signed at or before "
        "the start (or from its first record) to its last record of the period, and checked "
        "against every checkpoint signed up to the end; this pack's signature covers the head "
        "at the end.</p>",
        _table(
            [
                "instance",
                "records checked",
                "from #",
                "to #",
                "head at the period's end",
                "signed checkpoint at start",
                "signed checkpoints in the period",
            ],
            [
                [
                    i["instance"],
                    i["records_checked"],
                    i["first_seq"],
                    i["last_seq"],
                    i["head"],
                    _cp(i["checkpoint_at_start"], t),
                    i["checkpoints_in_period"],
                ]
                for i in ver["instances"]
            ],
        ),
        _table(
            ["instance", "#", "problem", "detail"],
            [[p["instance"], p["seq"], p["kind"], p["detail"]] for p in ver["problems"]],
        ),
        "<h2>4. Detection of unauthorised access (9.1.6)</h2>",
        _table(
            ["kind", "detected", "reviewed", "not reviewed"],
            [
                [a["kind"], a["detected"], a["reviewed"], a["not_reviewed"]]
                for a in det["anomalies_by_kind"]
            ],
        ),
        "<h3>Alert rules in force</h3>",
        f"<p>File: {escape(str(c['alerts']['file'] or 'not configured'))}"
        + (
            f", SHA-256 <code>{escape(c['alerts']['sha256'])}</code>"
            if c["alerts"]["sha256"]
            else ""
        )
        + "</p>",
        _table(
            ["alert", "severity", "for", "expression"],
            [[a["alert"], a["severity"], a["for"], a["expr"]] for a in c["alerts"]["rules"]],
        ),
        f"<h2>5. Reads of the trail (9.2.6): {f['trail_reads']['count']}</h2>",
        _table(
            ["user", "allowed", "refused"],
            [[u["user"], u["allowed"], u["refused"]] for u in f["trail_reads"]["by_user"]],
        ),
        _table(
            ["time", "user", "what", "action", "purpose", "query", "decision", "status"],
            [
                [
                    r["ts_us"] and t(r["ts_us"]),
                    r["user"],
                    r["route"],
                    r["action"],
                    r["purpose"],
                    r["query"],
                    r["decision"],
                    r["status"],
                ]
                for r in f["trail_reads"]["reads"]
            ],
        ),
        "<h2>6. Data subjects' requests (6.3, 6.5, 6.6) and retention (7.3)</h2>",
        _table(
            [
                "request",
                "type",
                "label",
                "ref",
                "received",
                "due",
                "report issued",
                "closed",
                "outcome",
                "deadline",
            ],
            [
                [
                    r["request"],
                    r["type"],
                    r["label"],
                    r["ref"],
                    r["received"],
                    r["due"],
                    t(r["report_issued_us"]),
                    t(r["closed_us"]),
                    r["outcome"] or "—",
                    r["standing"],
                ]
                for r in f["subject_requests"]["requests"]
            ],
        ),
        _table(
            ["request", "act of destruction: what", "where", "by", "when"],
            [
                [
                    r["request"],
                    r["act"]["what"],
                    r["act"]["where"],
                    r["act"]["by"],
                    r["act"]["when"],
                ]
                for r in f["subject_requests"]["requests"]
                if r["act"]
            ],
        ),
        "<h3>Retention: partitions of the trail dropped</h3>",
        _table(
            ["time", "by", "table", "partition", "rows", "cutoff", "reason"],
            [
                [
                    t(r["ts_us"]),
                    r["actor"],
                    r["table"],
                    r["partition"],
                    r["rows"],
                    r["cutoff"],
                    r["reason"],
                ]
                for r in f["retention"]
            ],
        ),
        f"<footer>pd-gateway evidence pack, format {pack['format']}. The signed document is "
        f"evidence.json (SHA-256 {digest}); this page is its rendering. Check both with "
        "<code>pd-gateway evidence verify</code>.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _cp(cp: dict[str, Any] | None, t: Any) -> str:
    if cp is None:
        return "none"
    return f"#{cp['seq']} signed {t(cp['ts_us'])} (key {cp['key_id']})"
