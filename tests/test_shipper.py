"""Shipper outages are visible (9.1.6): the lag grows while a batch cannot be confirmed, and
`pdgw_store_up` says the store is down now — against a real clickhouse-server killed and
restarted."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from pathlib import Path

import pytest

from gateway.audit.chserver import ClickHouseServer
from gateway.audit.factory import open_store
from gateway.audit.shipper import Shipper, ShipperMetrics
from tests.conftest import GatewayFactory, Keys, Upstream, replay_config, run_cli
from tests.stores import fresh_database, store_config, store_section, wait_for

pytestmark = pytest.mark.slow


async def test_lag_grows_and_store_up_falls_through_a_clickhouse_outage_then_recover(
    own_ch_server: ClickHouseServer,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
) -> None:
    section = store_section("clickhouse", fresh_database(), chdb_dir=chdb_dir, server=own_ch_server)
    gw = await make_gateway(upstream.url, store=section)
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}

    def shipped(n: int) -> bool:
        return gw.metric("pdgw_shipper_events_total") == n

    assert (await gw.client.get("/hr/employees/1", headers=auth)).status == 200
    await asyncio.to_thread(wait_for, lambda: shipped(1), 30, "the first event shipped")
    assert gw.metric("pdgw_store_up") == 1

    own_ch_server.kill()
    assert (await gw.client.get("/hr/employees/2", headers=auth)).status == 200  # spooled
    lags = []
    for _ in range(8):
        await asyncio.sleep(0.5)
        lags.append(gw.metric("pdgw_shipper_lag_seconds"))
    assert gw.metric("pdgw_store_up") == 0
    assert gw.metric("pdgw_shipper_errors_total", {"kind": "store"}) >= 1
    # It grows with the outage (it used to stay at its value from before the first attempt).
    assert lags[-1] >= 2.5, lags
    assert lags[-1] > lags[3] > lags[0], lags

    await asyncio.to_thread(own_ch_server.start)
    await asyncio.to_thread(wait_for, lambda: shipped(2), 60, "shipping after the restart")
    assert gw.metric("pdgw_store_up") == 1
    await asyncio.to_thread(
        wait_for, lambda: gw.metric("pdgw_shipper_lag_seconds") == 0, 10, "lag back to 0"
    )


def test_an_idle_shipper_probes_the_store_so_store_up_is_current(
    own_ch_server: ClickHouseServer, tmp_path: Path, chdb_dir: Path
) -> None:
    section = store_section("clickhouse", fresh_database(), chdb_dir=chdb_dir, server=own_ch_server)
    up: list[bool] = []
    shipper = Shipper(
        tmp_path / "spool",
        lambda: open_store(store_config(section)),
        probe_interval=0.2,
        metrics=ShipperMetrics(store_up=up.append),
    )
    shipper.start()
    try:
        wait_for(lambda: up[-1:] == [True], 30, "the first probe")
        own_ch_server.kill()
        t0 = time.monotonic()
        wait_for(lambda: up[-1] is False, 10, "the store seen down with nothing to ship")
        assert time.monotonic() - t0 < 5
        own_ch_server.start()
        wait_for(lambda: up[-1] is True, 30, "the store seen up again")
    finally:
        shipper.stop(drain_seconds=1)


def test_store_up_is_unknown_until_a_shipper_reports() -> None:
    from prometheus_client import CollectorRegistry

    from gateway.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    value = registry.get_sample_value("pdgw_store_up")
    assert value is not None and math.isnan(value)  # no store: no false "down" alert


@pytest.mark.parametrize("damage", ["torn", "corrupt"])
def test_replay_skips_a_torn_final_line_but_reports_a_corrupt_one(
    damage: str, tmp_path: Path, chdb_dir: Path, ch_server: ClickHouseServer
) -> None:
    from tests.test_store import _event, _write_spool

    now = dt.datetime.now(dt.UTC)
    spool = tmp_path / "dead-spool"
    _write_spool(spool, [_event(ts=now, seq=i) for i in range(1, 11)])
    first = sorted(spool.glob("*.jsonl"))[-1]
    with first.open("ab") as f:
        if damage == "torn":  # the instance died inside a write: never acknowledged (001)
            f.write(b'{"kind": "access", "seq": 11, "event_id": "e11", "outc')
        else:  # a complete line that is not a record: corruption, which replay must report
            f.write(b'{"kind": "access", "seq": 11, "event_id": "e11", "outc\n')
    _write_spool(spool, [_event(ts=now, seq=i) for i in range(12, 21)])  # the next run
    database = fresh_database()
    section = store_section("clickhouse", database, chdb_dir=chdb_dir, server=ch_server)
    out = run_cli(
        "audit", "replay", "--spool", str(spool), "--config", str(replay_config(tmp_path, section))
    )
    assert "19 events shipped" in out.stdout, out.stdout + out.stderr
    if damage == "torn":
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 unreadable records; 1 torn final lines skipped" in out.stdout
        assert "torn final line of a spool segment skipped" in out.stderr
    else:
        assert out.returncode == 1
        assert "1 unreadable records" in out.stdout and "torn final lines" not in out.stdout
