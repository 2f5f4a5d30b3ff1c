"""Shipper outages are visible (9.1.6): the lag grows while a batch cannot be confirmed, and
`pdgw_store_up` says the store is down now — against a real clickhouse-server killed and
restarted. How the shipper reads the spool and keeps its state (docs/decisions/005, 017)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.segments import list_segments
from gateway.audit.shipping import shipper as shipper_module
from gateway.audit.shipping import state as state_module
from gateway.audit.shipping import tail as tail_module
from gateway.audit.shipping.shipper import Shipper, ShipperMetrics
from gateway.audit.shipping.state import (
    LEGACY_STATE_FILE,
    STATE_FILE,
    STATE_SLOT,
    ShipperState,
    StateFile,
)
from gateway.audit.shipping.tail import SpoolTail
from gateway.audit.store.factory import open_store
from gateway.core import fsutil
from gateway.testing.chserver import ClickHouseServer
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

    from gateway.core.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    value = registry.get_sample_value("pdgw_store_up")
    assert value is not None and math.isnan(value)  # no store: no false "down" alert


@pytest.mark.parametrize("damage", ["torn", "corrupt"])
def test_replay_skips_a_torn_final_line_but_reports_a_corrupt_one(
    damage: str, tmp_path: Path, chdb_dir: Path, ch_server: ClickHouseServer
) -> None:
    from tests.audit.test_store import _event, _write_spool

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


def _segment(directory: Path, number: int, lines: list[bytes]) -> Path:
    path = directory / f"{number:012d}.jsonl"
    with path.open("ab") as f:
        f.write(b"".join(lines))
    return path


def _line(i: int, pad: int = 0) -> bytes:
    return b'{"kind":"note","i":%d,"pad":"%s"}\n' % (i, b"x" * pad)


def _age(directory: Path, seconds: float = 30) -> None:
    """The directory as it is when nothing was created in it for a while."""
    old = time.time_ns() - int(seconds * 1e9)
    os.utime(directory, ns=(old, old))


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def counting(directory: Path) -> list[Path]:
        calls.append(directory)
        return list_segments(directory)

    for module in (shipper_module, state_module, tail_module):  # every listing the shipper makes
        if hasattr(module, "list_segments"):
            monkeypatch.setattr(module, "list_segments", counting)
    return calls


def test_a_segment_longer_than_a_read_is_read_whole_before_the_next(tmp_path: Path) -> None:
    """A non-final segment of more than one read chunk (4 MiB) is read to its end; the line cut
    by the chunk's end is not a torn line (it was: everything after it in the segment was
    skipped)."""
    n = (9 * 1024 * 1024) // len(_line(0, 300)) + 1
    _segment(tmp_path, 1, [_line(i, 300) for i in range(n)])
    _segment(tmp_path, 2, [_line(n + i) for i in range(10)] + [b'{"kind":"note","i":'])
    torn: list[str] = []
    tail = SpoolTail(tmp_path, (1, 0), pytest.fail, torn.append)
    seen: list[int] = []
    while records := tail.read():
        seen += [rec["i"] for _, rec in records]
    assert seen == list(range(n + 10))
    assert torn == []  # the final segment's partial line is the live end, not torn


def test_the_tail_lists_the_directory_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listings = _count_listings(monkeypatch)
    _segment(tmp_path, 1, [_line(0)])
    _age(tmp_path)
    tail = SpoolTail(tmp_path, (1, 0), pytest.fail)
    seen = [rec["i"] for _, rec in tail.read()]
    for i in range(1, 50):  # the live end, read again and again as the writer appends
        _segment(tmp_path, 1, [_line(i)])
        seen += [rec["i"] for _, rec in tail.read()]
    assert len(listings) == 1
    _segment(tmp_path, 2, [_line(50)])  # a new segment: the directory changed
    _age(tmp_path, 20)
    seen += [rec["i"] for _, rec in tail.read()]
    assert seen == list(range(51)) and tail.position[0] == 2
    assert len(listings) == 2


def test_a_segment_made_in_the_same_clock_tick_as_the_listing_is_found(tmp_path: Path) -> None:
    """A directory's mtime has the kernel's coarse clock: a segment created just after a listing
    can leave it unchanged. A listing that recent is not trusted."""
    _segment(tmp_path, 1, [_line(0)])
    tail = SpoolTail(tmp_path, (1, 0), pytest.fail)
    assert [rec["i"] for _, rec in tail.read()] == [0]
    mtime = tmp_path.stat().st_mtime_ns
    _segment(tmp_path, 2, [_line(1)])
    os.utime(tmp_path, ns=(mtime, mtime))  # as if in the same tick
    assert [rec["i"] for _, rec in tail.read()] == [1]


def test_shipping_batches_does_not_list_the_spool_per_batch(
    tmp_path: Path, chdb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.audit.test_store import _event, _write_spool

    now = dt.datetime.now(dt.UTC)
    spool = tmp_path / "spool"
    _write_spool(spool, [_event(ts=now, seq=i) for i in range(1, 101)])
    state = StateFile(spool)
    state.save(state.load(spool))  # as a shipper that has run before left it
    state.close()
    section = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    open_store(store_config(section)).close()  # the schema
    shipper = Shipper(
        spool, lambda: open_store(store_config(section), apply_schema=False), batch_max_rows=5
    )
    shipper.acquire()
    _age(spool)  # nothing was created in the directory since: its listing can be trusted
    listings = _count_listings(monkeypatch)
    try:
        assert shipper.run(follow=False) == 100
    finally:
        shipper.release()
    assert len(listings) == 1  # once at the start; it was 2 a batch (a read, and deletion)
    store = open_store(store_config(section), apply_schema=False)
    assert sorted(
        int(r["seq"]) for r in store.select(f"SELECT seq FROM {store.database}.access_events")
    ) == list(range(1, 101))
    store.close()


def _state(n: int) -> ShipperState:
    intent = {"batch_id": f"b{n}", "last": [1, n], "rows": {"access_events": n}}
    return ShipperState((1, n), (1, n), intent)


def test_state_saves_after_the_first_are_in_place_with_one_data_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counting(fd: int, name: str = name, real: Any = real) -> None:
            syncs.append(name)
            real(fd)

        monkeypatch.setattr(os, name, counting)
    files = StateFile(tmp_path)
    files.load(tmp_path)
    files.save(_state(1))  # made whole and durable: file and directory
    assert syncs == ["fsync", "fsync"]
    inode = (tmp_path / STATE_FILE).stat().st_ino
    syncs.clear()
    for n in range(2, 12):
        files.save(_state(n))
    assert syncs == ["fdatasync"] * 10  # no temporary file, no rename, no directory fsync
    assert (tmp_path / STATE_FILE).stat().st_ino == inode
    assert (tmp_path / STATE_FILE).stat().st_size == 2 * STATE_SLOT
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    files.close()
    assert StateFile(tmp_path).load(tmp_path) == _state(11)


@pytest.mark.parametrize("damage", ["torn", "zeroed", "half"])
def test_a_state_save_cut_short_leaves_the_state_before_it(damage: str, tmp_path: Path) -> None:
    files = StateFile(tmp_path)
    files.load(tmp_path)
    for n in range(1, 6):
        files.save(_state(n))
    files.close()
    # The newest (5) is in slot 1; a crash during its write leaves it damaged.
    with (tmp_path / STATE_FILE).open("r+b") as f:
        f.seek(STATE_SLOT + {"torn": 60, "zeroed": 0, "half": 30}[damage])
        f.write({"torn": b"9", "zeroed": b"\0" * STATE_SLOT, "half": b" " * 80}[damage])
    again = StateFile(tmp_path)
    assert again.load(tmp_path) == _state(4)
    again.save(_state(6))  # the damaged slot is the one written next
    again.close()
    assert StateFile(tmp_path).load(tmp_path) == _state(6)


def test_an_earlier_releases_state_file_is_read_then_replaced(tmp_path: Path) -> None:
    legacy = b'{"shipped_through": [3, 100], "read_from": [2, 40], "intent": null}'
    fsutil.atomic_write(tmp_path / LEGACY_STATE_FILE, legacy)
    files = StateFile(tmp_path)
    state = files.load(tmp_path)
    assert state == ShipperState((3, 100), (2, 40), None)
    files.save(state)
    files.close()
    assert not (tmp_path / LEGACY_STATE_FILE).exists()
    assert StateFile(tmp_path).load(tmp_path) == state
