"""Audit store figures, both engines side by side in one run:

- shipper throughput: events/s from a spool (access + outcome records, as the gateway writes
  them) into the store, with the default batch size;
- "every event for subject X" over the shipped events (access_event_subjects), median of 50.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This checkout's gateway package, not the one the virtualenv has installed (an editable install
# points at the main checkout): a bench run from a worktree measures that worktree's code.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audit import chain
from gateway.audit.events import RECORD_VERSION, AccessEvent, Outcome
from gateway.audit.shipping.shipper import Shipper
from gateway.audit.spool import Spool
from gateway.audit.store.factory import open_store
from gateway.config.model import StoreConfig
from gateway.testing.chserver import ClickHouseServer

EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
SUBJECTS = 100_000


def make_spool(directory: Path, n: int) -> None:
    spool = Spool(directory, segment_max_bytes=64 * 1024 * 1024, instance="bench")
    spool.open()
    spool.close()
    rnd = random.Random(7)
    t0 = 1_790_000_000_000_000
    segment = sorted(directory.glob("*.jsonl"))[-1]
    seq, head = 0, chain.GENESIS

    def line(record: AccessEvent | Outcome) -> bytes:
        # What the spool writes (decision 012): numbered, chained, canonical form once.
        nonlocal seq, head
        seq += 1
        canon = chain.canonical(record.KIND, RECORD_VERSION, "bench", seq, record.values())
        head = chain.link(head, canon)
        return chain.line(canon, head)

    with segment.open("ab") as f:
        for i in range(1, n + 1):
            sid = str(rnd.randrange(SUBJECTS))
            ev = AccessEvent(
                event_id=f"{i:032x}",
                ts_us=t0 + i * 1000,
                request_id=f"r{i}",
                user=f"user{i % 500}",
                roles=["hr_officer"],
                client_ip="10.0.0.1",
                auth="bearer",
                session="",
                method="GET",
                path=f"/hr/employees/{sid}",
                query="",
                route="hr-employees",
                system="hr",
                category="employee",
                action="read",
                subject_ids=[sid],
                decision="allow",
                reason="rule",
                rule="p, hr_officer, hr, employee, read",
                policy_version="bench",
            )
            f.write(line(ev))
            f.write(line(Outcome(ev.event_id, 200, 0, 1024, 900, 700, "complete")))


def ship(spool: Path, cfg: StoreConfig) -> float:
    shipper = Shipper(spool, lambda: open_store(cfg), batch_max_rows=cfg.batch_max_rows)
    shipper.acquire()
    t0 = time.perf_counter()
    n = shipper.run(follow=False)
    dt = time.perf_counter() - t0
    shipper.release()
    assert n == EVENTS, n
    return dt


def subject_query_ms(cfg: StoreConfig) -> float:
    store = open_store(cfg, apply_schema=False)
    sql = (
        f"SELECT ts_us, user, action, decision FROM {cfg.database}.access_event_subjects "
        "WHERE subject_id = %(s)s"
    )
    store.select(sql, {"s": "1"})  # warm
    times = []
    for s in random.Random(1).sample(range(SUBJECTS), 50):
        t0 = time.perf_counter()
        rows = store.select(sql, {"s": str(s)})
        times.append((time.perf_counter() - t0) * 1000)
        assert rows is not None
    total = int(store.select(f"SELECT count() AS n FROM {cfg.database}.access_events")[0]["n"])
    assert total == EVENTS, total
    store.close()
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        make_spool(tmp / "spool", EVENTS)
        size = sum(p.stat().st_size for p in (tmp / "spool").glob("*.jsonl")) / 1e6
        print(f"\n## Audit store: {EVENTS:,} events ({size:.0f} MB of spool) shipped, then queried")
        print(f"(spool written in {time.perf_counter() - t0:.1f} s)")
        server = ClickHouseServer(tmp / "clickhouse")
        server.start()
        try:
            engines = {
                "chdb 26.9 (embedded)": StoreConfig(
                    kind="embedded", path=tmp / "chdb", database="bench"
                ),
                "clickhouse-server 18.16": StoreConfig(
                    kind="clickhouse", hosts=(("127.0.0.1", server.tcp_port),), database="bench"
                ),
            }
            print(f"{'engine':<26} {'ship events/s':>14} {'subject query p50':>18}")
            for name, cfg in engines.items():
                spool = tmp / f"spool-{cfg.kind}"
                shutil.copytree(tmp / "spool", spool)
                seconds = ship(spool, cfg)
                ms = subject_query_ms(cfg)
                print(f"{name:<26} {EVENTS / seconds:>14,.0f} {ms:>15.1f} ms")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
