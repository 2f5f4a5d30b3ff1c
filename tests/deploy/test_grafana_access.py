"""How Grafana reads the store so that 9.2.6 holds (decision 026, docs/operator-guide.md): the
compose stack's ClickHouse user file for Grafana, loaded as shipped into Debian's
clickhouse-server 18.16, lets that user run every dashboard query on the aggregates the trail's
inserts fill — and refuses it every table of the trail itself, writes, and other databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from gateway.audit.store import schema
from gateway.audit.store.base import AuditStore, StoreError, event_rows, table_row
from gateway.audit.store.clickhouse import ClickHouseParams, ClickHouseStore
from gateway.audit.store.factory import open_store
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import ROOT
from tests.deploy.test_dashboards import BUILD, grafana_sql
from tests.stores import require_server, store_config, store_section

SHIPPED = ROOT / "deploy" / "compose" / "clickhouse" / "users.d" / "grafana.xml"
COMPOSE_NETWORK = "<ip>10.247.0.0/24</ip>"
PASSWORD = "grafana-test-password"
NOW_US = int(dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC).timestamp()) * 1_000_000
# What a dashboards table must never hold: who, whose, from where, what exactly.
PERSONAL = {"user", "roles", "subject_id", "subject_ids", "client_ip", "path", "query"}
PERSONAL |= {"session", "actor", "request_id", "event_id", "response_subjects", "subject"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    require_server()
    srv = ClickHouseServer(tmp_path_factory.mktemp("grafana-ch"))
    text = SHIPPED.read_text()
    assert COMPOSE_NETWORK in text  # the compose network; this test connects from loopback
    (srv.directory / "users.d").mkdir()
    (srv.directory / "users.d" / "grafana.xml").write_text(
        text.replace(COMPOSE_NETWORK, "<ip>127.0.0.1</ip>")
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CH_GRAFANA_PASSWORD", PASSWORD)  # from_env, as the compose stack sets it
        srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def trail(
    server: ClickHouseServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuditStore]:
    """The gateway's side: the schema made by the gateway, events shipped as the shipper does."""
    section = store_section(
        "clickhouse", "pd_audit", chdb_dir=tmp_path_factory.mktemp("unused"), server=server
    )
    store = open_store(store_config(section), apply_schema=True)
    events = [
        {
            "event_id": f"e{i}",
            "request_id": f"r{i}",
            "ts_us": NOW_US + i,
            "instance": "gw-a",
            "seq": i + 1,
            "user": "alice",
            "roles": ["hr_officer"],
            "path": f"/hr/medical/{1000 + i}",
            "system": "hr",
            "category": "employee_health",
            "action": "read",
            "decision": "deny" if i % 3 == 0 else "allow",
            "reason": "break_glass" if i == 4 else "rule",
            "status": 200,
            "subject_ids": [str(1000 + i)],
        }
        for i in range(9)
    ]
    rows = [event_rows(e, "b1") for e in events]
    store.insert(schema.ACCESS_EVENTS, [r for r, _ in rows], "b1")
    store.insert(schema.ACCESS_EVENT_SUBJECTS, [s for _, subs in rows for s in subs], "b1")
    summary = {"window_start_us": NOW_US, "route": "hr", "reason": "missing_token", "count": 4}
    store.insert(
        schema.REFUSAL_SUMMARIES, [table_row(schema.REFUSAL_SUMMARIES, summary, "b2")], "b2"
    )
    change = {"change_id": "c1", "ts_us": NOW_US, "kind": "rule_added", "actor": "ivan"}
    rec = table_row(schema.PERMISSION_CHANGE_RECORDS, change, "b3")
    store.insert(schema.PERMISSION_CHANGE_RECORDS, [rec, {**rec, "instance": "gw-b"}], "b3")
    store.execute("CREATE TABLE IF NOT EXISTS default.elsewhere (x UInt8) ENGINE = Memory")
    yield store
    store.close()


def grafana(server: ClickHouseServer, password: str = PASSWORD) -> ClickHouseStore:
    return ClickHouseStore(
        ClickHouseParams(
            hosts=(("127.0.0.1", server.tcp_port),),
            database="pd_audit_dashboards",
            user="grafana",
            password=password,
            connect_timeout=2,
            send_receive_timeout=5,
        )
    )


def test_every_dashboard_query_runs_as_grafanas_user_on_the_aggregates(
    server: ClickHouseServer, trail: AuditStore
) -> None:
    g = grafana(server)
    for panel in BUILD.SQL_PANELS:
        assert "pd_audit_dashboards." in panel.sql and "pd_audit." not in panel.sql
        rows = g.select(grafana_sql(panel.sql, "pd_audit"))
        assert rows, panel.title
        assert tuple(rows[0]) == panel.columns, panel.title
    totals = g.select("SELECT sum(accesses) AS n FROM pd_audit_dashboards.access_counts")
    assert int(totals[0]["n"]) == 9  # every access counted, once
    changes = g.select(
        "SELECT uniqExactMerge(changes) AS n FROM pd_audit_dashboards.permission_change_counts"
    )
    assert int(changes[0]["n"]) == 1  # one change, though two replicas recorded it (9.2.7)
    g.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count() FROM pd_audit.access_events",
        "SELECT subject_id FROM pd_audit.access_event_subjects LIMIT 1",
        "SELECT * FROM pd_audit.permission_changes LIMIT 1",
        "SELECT * FROM pd_audit.subject_blocks LIMIT 1",
        "SELECT * FROM pd_audit.auth_events LIMIT 1",
        "SELECT * FROM remote('127.0.0.1', pd_audit.access_events) LIMIT 1",
        "SELECT * FROM default.elsewhere LIMIT 1",
        "INSERT INTO pd_audit_dashboards.access_counts (accesses) SELECT 1",
        "CREATE TABLE pd_audit_dashboards.mine (x UInt8) ENGINE = Memory",
        "DROP TABLE pd_audit_dashboards.access_counts",
    ],
)
def test_grafanas_user_is_refused_the_trail_writes_and_other_databases(
    server: ClickHouseServer, trail: AuditStore, sql: str
) -> None:
    g = grafana(server)
    with pytest.raises(StoreError) as refused:
        g.select(sql)
    g.close()
    # 291: database access denied; 164: read-only (what the server said, not a typo here).
    assert str(refused.value).rsplit(":", 1)[1].strip() in ("291", "164"), refused.value
    assert int(trail.select(f"SELECT count() AS n FROM {trail.database}.access_events")[0]["n"])


def test_the_dashboards_database_holds_no_personal_data_and_a_wrong_password_gets_nothing(
    server: ClickHouseServer, trail: AuditStore
) -> None:
    g = grafana(server)
    columns = g.select(
        "SELECT table, name FROM system.columns WHERE database = 'pd_audit_dashboards'"
    )
    assert {str(c["table"]) for c in columns} == {a.table.name for a in schema.AGGREGATES} | {
        f"{a.table.name}_mv" for a in schema.AGGREGATES
    }
    assert not {str(c["name"]) for c in columns} & PERSONAL
    g.close()
    wrong = grafana(server, password="not-it")
    with pytest.raises(StoreError):
        wrong.select("SELECT 1")
    wrong.close()
