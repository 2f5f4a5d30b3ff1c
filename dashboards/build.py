"""Build the Grafana dashboards in this directory with Grafana's foundation SDK
(`grafana-foundation-sdk`, a dev dependency): `python dashboards/build.py` writes one JSON file a
dashboard; tests/deploy/test_dashboards.py checks that the files are what this builds, that every
ClickHouse query runs on the real schema (chdb and clickhouse-server 18.16) and returns the
columns its panel expects, and that every PromQL expression parses and names only metrics the
gateway exports.

Two data sources, as provisioned in deploy/compose/grafana/provisioning: `prometheus` (health)
and `clickhouse-audit` (the grafana-clickhouse-datasource plugin, read-only user, database
`pd_audit`). The SDK has no ClickHouse query type; `ClickHouseQuery` below is one.

ClickHouse queries use only `$__timeFilter(ts)` of the plugin's macros and functions that
ClickHouse 18.16 has (the dashboards work on an old server as on a modern one). Subjects are
shown hashed (cityHash64), never as the raw id; users are shown as the trail records them.
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
DB = "pd_audit"


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


WINDOW = "$__timeFilter(ts)"


def access_overview() -> db.Dashboard:
    uid = "pdgw-access"
    d = _dashboard(
        uid,
        "pd-gateway: personal-data access",
        "Who accessed which personal data, by system, category, action, decision and job "
        "function (9.1.6).",
    )
    return (
        d.with_panel(
            sql_series(
                uid,
                "Accesses by decision",
                f"SELECT toStartOfFiveMinute(ts) AS time, decision, count() AS accesses "
                f"FROM {DB}.access_events WHERE {WINDOW} GROUP BY time, decision ORDER BY time",
                ["time", "decision", "accesses"],
                w=24,
            )
        )
        .with_panel(
            sql_table(
                uid,
                "By system, category, action and decision",
                f"SELECT system, category, action, decision, count() AS accesses, "
                f"uniqExact(user) AS users FROM {DB}.access_events WHERE {WINDOW} "
                f"GROUP BY system, category, action, decision ORDER BY accesses DESC",
                ["system", "category", "action", "decision", "accesses", "users"],
            )
        )
        .with_panel(
            sql_table(
                uid,
                "By job function",
                f"SELECT arrayJoin(if(empty(roles), ['(none)'], roles)) AS job_function, "
                f"decision, count() AS accesses FROM {DB}.access_events WHERE {WINDOW} "
                f"GROUP BY job_function, decision ORDER BY accesses DESC",
                ["job_function", "decision", "accesses"],
            )
        )
    )


def top_users_subjects() -> db.Dashboard:
    uid = "pdgw-top"
    d = _dashboard(
        uid,
        "pd-gateway: top users and subjects",
        "The users with the most accesses and the data subjects accessed most (hashed).",
    )
    return d.with_panel(
        sql_table(
            uid,
            "Top users",
            f"SELECT user, count() AS accesses, uniqExact(system) AS systems, "
            f"countIf(decision = 'deny') AS refused FROM {DB}.access_events "
            f"WHERE {WINDOW} AND user != '' GROUP BY user ORDER BY accesses DESC LIMIT 20",
            ["user", "accesses", "systems", "refused"],
        )
    ).with_panel(
        sql_table(
            uid,
            "Top subjects (hashed)",
            f"SELECT hex(cityHash64(subject_id)) AS subject_hash, category, count() AS accesses, "
            f"uniqExact(user) AS users FROM {DB}.access_event_subjects WHERE {WINDOW} "
            f"GROUP BY subject_hash, category ORDER BY accesses DESC LIMIT 20",
            ["subject_hash", "category", "accesses", "users"],
        )
    )


def refusals() -> db.Dashboard:
    uid = "pdgw-refusals"
    d = _dashboard(
        uid,
        "pd-gateway: refusals and probes",
        "Refused requests: by reason, by user, and anonymous refusals (no valid token).",
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
                "Users refused most",
                f"SELECT user, reason, count() AS refusals, uniqExact(path) AS paths "
                f"FROM {DB}.access_events WHERE {WINDOW} AND decision = 'deny' AND user != '' "
                f"GROUP BY user, reason ORDER BY refusals DESC LIMIT 20",
                ["user", "reason", "refusals", "paths"],
            )
        )
        .with_panel(
            sql_table(
                uid,
                "Anonymous refusals (no valid token)",
                f"SELECT route, reason, client_ip, sum(count) AS refusals FROM "
                f"{DB}.refusal_summaries WHERE {WINDOW} GROUP BY route, reason, client_ip "
                f"ORDER BY refusals DESC LIMIT 20",
                ["route", "reason", "client_ip", "refusals"],
            )
        )
    )


def permission_changes() -> db.Dashboard:
    uid = "pdgw-changes"
    d = _dashboard(
        uid,
        "pd-gateway: permission changes and break-glass",
        "Every change of access rights, counted once (9.2.7), and every break-glass access.",
    )
    return d.with_panel(
        sql_table(
            uid,
            "Permission changes",
            f"SELECT ts, actor, kind, role, user, reason, source, length(instances) AS replicas "
            f"FROM {DB}.permission_changes WHERE {WINDOW} ORDER BY ts DESC LIMIT 200",
            ["ts", "actor", "kind", "role", "user", "reason", "source", "replicas"],
            w=24,
        )
    ).with_panel(
        sql_table(
            uid,
            "Break-glass accesses",
            f"SELECT ts, user, rule, system, category, action, path, status "
            f"FROM {DB}.access_events WHERE {WINDOW} AND reason = 'break_glass' "
            f"ORDER BY ts DESC LIMIT 200",
            ["ts", "user", "rule", "system", "category", "action", "path", "status"],
            w=24,
        )
    )


def anomalies() -> db.Dashboard:
    uid = "pdgw-anomalies"
    d = _dashboard(
        uid,
        "pd-gateway: anomalies",
        "Detections over the whole trail (9.1.6, 9.1.9, 10.2): bulk access, off-hours, "
        "probing, special-category reads, exports, break-glass, permission changes.",
    )
    return (
        d.with_panel(
            prom(
                uid,
                "Detections by kind",
                [
                    (
                        "sum by (kind) (increase(pdgw_anomalies_total[$__rate_interval]))",
                        "{{kind}}",
                    )
                ],
                w=24,
            )
        )
        .with_panel(
            sql_table(
                uid,
                "Detections",
                f"SELECT ts, kind, user, job_function, count, distinct_subjects, threshold, "
                f"sample_request_ids FROM {DB}.anomalies FINAL WHERE {WINDOW} "
                f"ORDER BY ts DESC LIMIT 200",
                [
                    "ts",
                    "kind",
                    "user",
                    "job_function",
                    "count",
                    "distinct_subjects",
                    "threshold",
                    "sample_request_ids",
                ],
                w=24,
            )
        )
        .with_panel(
            sql_table(
                uid,
                "Users with most detections",
                f"SELECT user, groupUniqArray(kind) AS kinds, count() AS detections "
                f"FROM {DB}.anomalies FINAL WHERE {WINDOW} GROUP BY user "
                f"ORDER BY detections DESC LIMIT 20",
                ["user", "kinds", "detections"],
            )
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
        d.with_panel(prom_stat(uid, "Ready replicas", "sum(pdgw_ready)"))
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


DASHBOARDS = (access_overview, top_users_subjects, refusals, permission_changes, anomalies, health)


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
