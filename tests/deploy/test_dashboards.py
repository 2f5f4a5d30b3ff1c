"""The Grafana dashboards (dashboards/): the committed JSON is what dashboards/build.py builds;
every ClickHouse panel query runs on the real schema with sample data shipped into the trail's
tables (the aggregates database is filled by the store itself), on chdb and on
clickhouse-server 18.16, and returns the columns its panel expects; every PromQL expression
parses (promtool) and names only metrics the gateway exports. What Grafana's user may read is
tests/deploy/test_grafana_access.py."""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, change_row, event_rows, table_row
from gateway.audit.store.factory import open_store
from gateway.config.load import load_config
from gateway.runtime.app import build
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import ROOT, Keys, Upstream, config_dict, write_config
from tests.deploy.test_alerts import promtool
from tests.stores import ENGINES, fresh_database, store_config, store_section

NOW = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
NOW_US = int(NOW.timestamp()) * 1_000_000


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dashboards_build", ROOT / "dashboards" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashboards_build"] = module
    spec.loader.exec_module(module)
    return module


BUILD = _builder()


def grafana_sql(sql: str, database: str) -> str:
    """A panel's query as the plugin sends it: its time macro expanded, the trail's database
    (``database``) in place of the provisioned name."""
    return sql.replace(
        "$__timeFilter(time)",
        "time >= toDateTime('2026-11-29 00:00:00') AND time <= toDateTime('2026-12-01 00:00:00')",
    ).replace("pd_audit_dashboards.", f"{database}_dashboards.")


RENDERED: dict[str, str] = BUILD.render()


def test_the_committed_dashboards_are_what_the_builder_makes() -> None:
    on_disk = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert on_disk == RENDERED, "run `python dashboards/build.py` and commit the result"
    assert len(RENDERED) == 5


@pytest.fixture(params=ENGINES, scope="module")
def sample_store(request: Any, chdb_dir: Path, ch_server: ClickHouseServer) -> Iterator[AuditStore]:
    section = store_section(request.param, fresh_database(), chdb_dir=chdb_dir, server=ch_server)
    store = open_store(store_config(section), apply_schema=True)
    events = [
        {
            "event_id": f"e{i}",
            "request_id": f"r{i}",
            "ts_us": NOW_US + i,
            "instance": "gw-a",
            "seq": i + 1,
            "user": f"user{i % 3}",
            "roles": ["hr_officer"] if i % 2 else [],
            "path": f"/hr/employees/{i}",
            "system": "hr",
            "category": "employee",
            "action": "read",
            "decision": "deny" if i % 4 == 0 else "allow",
            "reason": "break_glass" if i == 5 else "rule",
            "status": 200,
            "subject_ids": [str(i)],
        }
        for i in range(12)
    ]
    rows, subjects = [], []
    for e in events:
        row, subs = event_rows(e, "sample")
        rows.append(row)
        subjects += subs
    store.insert(schema.ACCESS_EVENTS, rows, "sample")
    store.insert(schema.ACCESS_EVENT_SUBJECTS, subjects, "sample")
    summary = {"window_start_us": NOW_US, "window_end_us": NOW_US + 60_000_000, "count": 3}
    store.insert(
        schema.REFUSAL_SUMMARIES,
        [table_row(schema.REFUSAL_SUMMARIES, {**summary, "route": "hr", "reason": "x"}, "s")],
        "s",
    )
    change = {"change_id": "c1", "ts_us": NOW_US, "change_kind": "grant", "actor": "admin"}
    store.insert(schema.PERMISSION_CHANGE_RECORDS, [change_row(change, "s")], "s")
    anomaly = table_row(
        schema.ANOMALIES,
        {"anomaly_id": "a1", "ts_us": NOW_US, "kind": "bulk_access", "user": "user1"},
        "s",
    )
    anomaly["sample_request_ids"] = ["r1", "r2"]
    store.insert(schema.ANOMALIES, [anomaly], "s")
    yield store
    store.close()


@pytest.mark.parametrize("panel", BUILD.SQL_PANELS, ids=lambda p: f"{p.dashboard}:{p.title}")
def test_every_clickhouse_panel_query_returns_its_columns(
    panel: Any, sample_store: AuditStore
) -> None:
    # What the plugin makes of the one macro the dashboards use, and the provisioned database.
    sql = grafana_sql(panel.sql, sample_store.database)
    rows = sample_store.select(sql)
    assert rows, "sample data should give rows"
    assert tuple(rows[0]) == panel.columns


def test_every_promql_expression_parses() -> None:
    exprs = [e.replace("$__rate_interval", "5m") for _, _, e in BUILD.PROMQL]
    assert exprs
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = Path(subprocess.check_output(["mktemp", "--suffix=.yml"], text=True).strip())
    try:
        path.write_text(yaml.safe_dump(rules))
        check = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        path.unlink()


async def test_promql_names_only_metrics_the_gateway_exports(
    tmp_path: Path, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    cfg = load_config(write_config(tmp_path, config_dict(tmp_path, upstream.url), keys))
    proxy_app, admin_app = build(cfg, CollectorRegistry())
    await aiohttp_client(proxy_app)
    admin: TestClient[Any, Any] = await aiohttp_client(admin_app)
    text = await (await admin.get("/metrics")).text()
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    names = {n for n, _ in exported} | {f"{n}_total" for n, k in exported if k == "counter"}
    names |= {
        f"{n}_{s}" for n, k in exported if k == "histogram" for s in ("bucket", "count", "sum")
    }
    used = {m for _, _, e in BUILD.PROMQL for m in re.findall(r"\b(pdgw_\w+)", e)}
    assert used and used <= names, used - names
