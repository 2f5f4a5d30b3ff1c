"""Build the Grafana dashboards in this directory with Grafana's foundation SDK
(`grafana-foundation-sdk`, a dev dependency): `python dashboards/build.py` writes one JSON file a
dashboard; tests/deploy/test_dashboards.py checks that the files are what this builds, that every
ClickHouse query runs on the real schema (chdb and clickhouse-server 18.16) and returns the
columns its panel expects, and that every PromQL expression parses and names only metrics the
gateway exports.

Two data sources, as provisioned in deploy/compose/grafana/provisioning: `prometheus` (health)
and `clickhouse-audit` (the grafana-clickhouse-datasource plugin, the read-only user `grafana`,
database `pd_audit_dashboards`). The SDK has no ClickHouse query type; `ClickHouseQuery` below
is one.

9.2.6 (decision 026): the dashboards read counts from the aggregates database only — the
trail's own tables (who accessed whose data) are closed to Grafana's user, and per-person
questions are answered by the gateway's console, where each is authorised and recorded.
ClickHouse queries use only `$__timeFilter(time)` of the plugin's macros and functions that
ClickHouse 18.16 has (the dashboards work on an old server as on a modern one).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
CLICKHOUSE = DataSourceRef(type_val="grafana-clickhouse-datasource", uid="clickhouse-audit")
# The aggregates database (decision 026): counts only, never a user, a subject or an address.
# Grafana's ClickHouse user may read this database and no other (9.2.6).
DB = "pd_audit_dashboards"


class _ClickHouse(variants.Dataquery):
    def __init__(self, sql: str, ref_id: str, fmt: int) -> None:
        self.sql = sql
        self.ref_id = ref_id
        self.fmt = fmt

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": CLICKHOUSE.to_json(),
            "editorType": "sql",
            "queryType": "table" if self.fmt == 1 else "timeseries",
            "format": self.fmt,  # 0 time series, 1 table
            "rawSql": self.sql,
        }


class ClickHouseQuery(cogbuilder.Builder[variants.Dataquery]):
    """A raw-SQL query of the grafana-clickhouse-datasource plugin."""

    def __init__(self, sql: str, ref_id: str = "A", *, timeseries: bool = False) -> None:
        self._q = _ClickHouse(sql, ref_id, 0 if timeseries else 1)

    def build(self) -> variants.Dataquery:
        return self._q


@dataclass(frozen=True)
class SQLPanel:
    """What the tests check of a ClickHouse panel: its query and the columns it must return."""

    dashboard: str
    title: str
    sql: str
    columns: tuple[str, ...]


SQL_PANELS: list[SQLPanel] = []
PROMQL: list[tuple[str, str, str]] = []  # (dashboard, panel title, expression)


def _sql(uid: str, title: str, sql: str, columns: Sequence[str]) -> str:
    SQL_PANELS.append(SQLPanel(uid, title, sql, tuple(columns)))
    return sql


def sql_table(uid: str, title: str, sql: str, columns: Sequence[str], w: int = 12) -> Any:
    return (
        table.Panel()
        .title(title)
        .datasource(CLICKHOUSE)
        .with_target(ClickHouseQuery(_sql(uid, title, sql, columns)))
        .span(w)
        .height(9)
    )


def sql_series(uid: str, title: str, sql: str, columns: Sequence[str], w: int = 12) -> Any:
    return (
        timeseries.Panel()
        .title(title)
        .datasource(CLICKHOUSE)
        .with_target(ClickHouseQuery(_sql(uid, title, sql, columns), timeseries=True))
        .span(w)
        .height(8)
    )


def prom(
    uid: str, title: str, exprs: Sequence[tuple[str, str]], unit: str = "short", w: int = 12
) -> Any:
    panel = timeseries.Panel().title(title).datasource(PROMETHEUS).unit(unit).span(w).height(8)
    for i, (expr, legend) in enumerate(exprs):
        PROMQL.append((uid, title, expr))
        panel = panel.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        )
    return panel


def prom_stat(uid: str, title: str, expr: str, unit: str = "short") -> Any:
    PROMQL.append((uid, title, expr))
    return (
        stat.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .with_target(prometheus.Dataquery().expr(expr).instant())
        .span(6)
        .height(4)
    )


def _dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["pd-gateway", "152-FZ"])
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("browser")
        .readonly()
    )


WINDOW = "$__timeFilter(time)"


def access_overview() -> db.Dashboard:
    uid = "pdgw-access"
    d = _dashboard(
        uid,
        "pd-gateway: personal-data access",
        "How much personal data is accessed, by system, category, action, decision and job "
        "function (9.1.6). Counts only; who and whose: the gateway's console (9.2.6).",
    )
    return (
        d.with_panel(
            sql_series(
                uid,
                "Accesses by decision",
                f"SELECT time, decision, sum(accesses) AS accesses FROM {DB}.access_counts "
                f"WHERE {WINDOW} GROUP BY time, decision ORDER BY time",
                ["time", "decision", "accesses"],
                w=24,
            )
        )
        .with_panel(
            sql_table(
                uid,
                "By system, category, action and decision",
                f"SELECT system, category, action, decision, sum(accesses) AS accesses "
                f"FROM {DB}.access_counts WHERE {WINDOW} "
                f"GROUP BY system, category, action, decision ORDER BY accesses DESC",
                ["system", "category", "action", "decision", "accesses"],
            )
        )
        .with_panel(
            sql_table(
                uid,
                "By job function",
                f"SELECT job_function, decision, sum(accesses) AS accesses "
                f"FROM {DB}.job_function_counts WHERE {WINDOW} "
                f"GROUP BY job_function, decision ORDER BY accesses DESC",
                ["job_function", "decision", "accesses"],
            )
        )
    )


def refusals() -> db.Dashboard:
    uid = "pdgw-refusals"
    d = _dashboard(
        uid,
        "pd-gateway: refusals and probes",
        "Refused requests: by reason, by system and category, and anonymous refusals (no valid "
        "token). Who was refused: the gateway's console.",
    )
    return (
        d.with_panel(
            prom(
                uid,
                "Refusals per second by reason",
                [("sum by (reason) (rate(pdgw_denials_total[$__rate_interval]))", "{{reason}}")],
                unit="reqps",
                w=24,
            )
        )
        .with_panel(
            sql_table(
                uid,
                "Refusals by system, category and reason",
                f"SELECT system, category, reason, sum(accesses) AS refusals "
                f"FROM {DB}.access_counts WHERE {WINDOW} AND decision = 'deny' "
                f"GROUP BY system, category, reason ORDER BY refusals DESC LIMIT 50",
                ["system", "category", "reason", "refusals"],
            )
        )
        .with_panel(
            sql_table(
                uid,
                "Anonymous refusals (no valid token)",
                f"SELECT route, reason, status, sum(refusals) AS refusals FROM "
                f"{DB}.anonymous_refusal_counts WHERE {WINDOW} GROUP BY route, reason, status "
                f"ORDER BY refusals DESC LIMIT 50",
                ["route", "reason", "status", "refusals"],
            )
        )
    )


def permission_changes() -> db.Dashboard:
    uid = "pdgw-changes"
    d = _dashboard(
        uid,
        "pd-gateway: permission changes and break-glass",
        "How many changes of access rights, each counted once (9.2.7), and break-glass accesses. "
        "Every change with its actor, reason and delta: the gateway's console.",
    )
    return d.with_panel(
        sql_series(
            uid,
            "Permission changes by kind",
            f"SELECT time, kind, uniqExactMerge(changes) AS changes "
            f"FROM {DB}.permission_change_counts WHERE {WINDOW} GROUP BY time, kind ORDER BY time",
            ["time", "kind", "changes"],
            w=24,
        )
    ).with_panel(
        sql_table(
            uid,
            "Break-glass accesses by system and category",
            f"SELECT system, category, action, sum(accesses) AS accesses "
            f"FROM {DB}.access_counts WHERE {WINDOW} AND reason = 'break_glass' "
            f"GROUP BY system, category, action ORDER BY accesses DESC",
            ["system", "category", "action", "accesses"],
            w=24,
        )
    )


def anomalies() -> db.Dashboard:
    uid = "pdgw-anomalies"
    d = _dashboard(
        uid,
        "pd-gateway: anomalies",
        "Detections over the whole trail (9.1.6, 9.1.9, 10.2): bulk access, off-hours, "
        "probing, special-category reads, exports, break-glass, permission changes. Each "
        "detection, the accesses behind it and its review: the gateway's console.",
    )
    return d.with_panel(
        prom(
            uid,
            "Detections by kind",
            [("sum by (kind) (increase(pdgw_anomalies_total[$__rate_interval]))", "{{kind}}")],
            w=24,
        )
    ).with_panel(
        prom(
            uid,
            "Detections by job function",
            [
                (
                    "sum by (job_function) (increase(pdgw_anomalies_total[$__rate_interval]))",
                    "{{job_function}}",
                )
            ],
            w=24,
        )
    )


def health() -> db.Dashboard:
    uid = "pdgw-health"
    d = _dashboard(
        uid,
        "pd-gateway: gateway health",
        "Throughput, latency, the audit spool and shipping, the store, upstream errors.",
    )
    return (
        d.with_panel(prom_stat(uid, "Ready pods", "count(min by (instance) (pdgw_ready) == 1)"))
        .with_panel(prom_stat(uid, "Store up", "min(pdgw_store_up)"))
        .with_panel(prom_stat(uid, "Shipping lag", "max(pdgw_shipper_lag_seconds)", unit="s"))
        .with_panel(prom_stat(uid, "Spool backlog", "sum(pdgw_spool_backlog_bytes)", unit="bytes"))
        .with_panel(
            prom(
                uid,
                "Requests per second by decision",
                [
                    (
                        "sum by (decision) (rate(pdgw_requests_total[$__rate_interval]))",
                        "{{decision}}",
                    )
                ],
                unit="reqps",
            )
        )
        .with_panel(
            prom(
                uid,
                "Gateway latency (own time)",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        "(rate(pdgw_gateway_overhead_seconds_bucket[$__rate_interval])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.99)
                ],
                unit="s",
            )
        )
        .with_panel(
            prom(
                uid,
                "Spool and shipping",
                [
                    ("sum by (instance) (pdgw_spool_backlog_bytes)", "backlog {{instance}}"),
                    ("max by (instance) (pdgw_shipper_lag_seconds)", "lag s {{instance}}"),
                ],
            )
        )
        .with_panel(
            prom(
                uid,
                "Errors",
                [
                    (
                        "sum by (kind) (rate(pdgw_upstream_errors_total[$__rate_interval]))",
                        "upstream {{kind}}",
                    ),
                    (
                        "sum by (kind) (rate(pdgw_shipper_errors_total[$__rate_interval]))",
                        "shipper {{kind}}",
                    ),
                ],
                unit="reqps",
            )
        )
    )


DASHBOARDS = (access_overview, refusals, permission_changes, anomalies, health)


def render() -> dict[str, str]:
    """File name → JSON text, for every dashboard."""
    SQL_PANELS.clear()
    PROMQL.clear()
    out: dict[str, str] = {}
    for make in DASHBOARDS:
        built = make().build()
        text = json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        out[f"{built.uid}.json"] = text
    return out


def main() -> int:
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote dashboards/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
