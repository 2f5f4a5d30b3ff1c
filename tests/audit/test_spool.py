"""The durable spool: group commit, torn writes, restart, both durability modes (9.1.8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit.events import AccessEvent, join
from gateway.audit.segments import BadLine, last_head, list_segments, read_records
from gateway.audit.spool import Spool, SpoolHooks
from gateway.core.errors import SpoolUnavailable


def rec(n: int) -> AccessEvent:
    """An access record; the spool gives it its sequence number."""
    return AccessEvent(
        f"e{n}",
        n,
        f"r{n}",
        "u",
        [],
        "127.0.0.1",
        "bearer",
        "",
        "GET",
        f"/p/{n}",
        "",
        "r",
        "s",
        "c",
        "read",
        [],
        "deny",
        "no_matching_rule",
        "",
        "v1",
        403,
        outcome="complete",
    )


def seqs(directory: Path, on_bad: Callable[[BadLine], None] | None = None) -> list[int]:
    return [r["seq"] for r in read_records(directory, on_bad) if r["kind"] == "access"]


class Counting(SpoolHooks):
    def __init__(self) -> None:
        super().__init__()
        self.fsyncs = 0
        self.fsync_seconds = self._count

    def _count(self, seconds: float) -> None:
        self.fsyncs += 1


@pytest.mark.parametrize("durability", ["fsync", "batch"])
async def test_concurrent_appends_share_fsyncs_and_all_land_in_order(
    tmp_path: Path, durability: str
) -> None:
    hooks = Counting()
    spool = Spool(tmp_path, durability=durability, hooks=hooks)  # type: ignore[arg-type]
    spool.open()
    await asyncio.gather(*(spool.append(rec(i)) for i in range(1, 501)))
    spool.close()
    assert seqs(tmp_path) == list(range(1, 501))
    # Group commit: far fewer fsyncs than records (one per batch, not per record).
    assert 1 <= hooks.fsyncs <= 25


async def test_batch_durability_fsyncs_within_its_interval_while_records_wait(
    tmp_path: Path,
) -> None:
    """durability: batch promises an fsync every batch_interval_ms while records are pending:
    without closing the spool (which syncs anyway), written records are fsynced and the age of
    the oldest unsynced record (pdgw_spool_unsynced_age_seconds) falls back to 0."""
    hooks = Counting()
    spool = Spool(tmp_path, durability="batch", batch_interval_ms=20, hooks=hooks)  # type: ignore[arg-type]
    spool.open()
    try:
        synced_at_open = hooks.fsyncs  # the first segment's header
        await asyncio.gather(*(spool.append(rec(i)) for i in range(1, 51)))
        assert spool.unsynced_age_seconds > 0  # written, not yet durable
        for _ in range(200):  # 5 s at most; the promise is 20 ms
            if hooks.fsyncs > synced_at_open and spool.unsynced_age_seconds == 0:
                break
            await asyncio.sleep(0.025)
        assert hooks.fsyncs > synced_at_open, "no fsync while records waited"
        assert spool.unsynced_age_seconds == 0
    finally:
        spool.close()


async def test_append_after_close_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.close()
    with pytest.raises(SpoolUnavailable):
        await spool.append(rec(1))


async def test_restart_starts_a_new_segment_and_continues_the_sequence(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    for _ in range(3):
        await spool.append(rec(0))
    spool.close()
    spool = Spool(tmp_path)
    spool.open()
    await spool.append(rec(0))
    spool.close()
    assert len(list_segments(tmp_path)) == 2
    assert seqs(tmp_path) == [1, 2, 3, 4]


async def test_torn_final_line_is_skipped_and_never_appended_after(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    await spool.append(rec(0))
    spool.close()
    (segment,) = list_segments(tmp_path)
    with segment.open("ab") as f:  # what a crash mid-write leaves: half a record, no newline
        f.write(b'{"hash":"00","rec":["access",2,"",2,"e')
    bad: list[BadLine] = []
    assert seqs(tmp_path, bad.append) == [1]
    assert bad and bad[0].line == 3 and "torn" in bad[0].problem  # after start + record
    assert last_head(tmp_path).seq == 1
    spool = Spool(tmp_path)
    spool.open()
    await spool.append(rec(0))
    spool.close()
    assert seqs(tmp_path) == [1, 2]


async def test_segments_rotate_at_the_configured_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=4096)
    spool.open()
    for i in range(1, 301):
        await spool.append(rec(i))
    spool.close()
    assert len(list_segments(tmp_path)) > 3
    assert seqs(tmp_path) == list(range(1, 301))


def test_join_folds_outcomes_and_marks_lost_ones_unknown() -> None:
    records = [
        {"kind": "access", "event_id": "a", "seq": 1, "outcome": "pending", "status": 0},
        {"kind": "access", "event_id": "b", "seq": 2, "outcome": "pending", "status": 0},
        {
            "kind": "outcome",
            "event_id": "a",
            "seq": 1,
            "status": 200,
            "bytes_in": 0,
            "bytes_out": 5,
            "duration_us": 10,
            "upstream_us": 5,
            "outcome": "complete",
        },
    ]
    events = list(join(json.loads(json.dumps(r)) for r in records))
    assert [(e["event_id"], e["status"], e["outcome"]) for e in events] == [
        ("a", 200, "complete"),
        ("b", 0, "unknown"),
    ]


async def test_sequence_survives_the_deletion_of_every_older_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=4096)
    spool.open()
    for _ in range(100):
        await spool.append(rec(0))
    spool.close()
    *older, _newest = list_segments(tmp_path)
    for p in older:  # what the shipper does once they are in the store
        p.unlink()
    assert last_head(tmp_path).seq == 100
    spool = Spool(tmp_path)
    spool.open()
    await spool.append(rec(0))
    spool.close()
    assert seqs(tmp_path)[-1] == 101


async def test_spool_over_its_size_limit_refuses_or_alerts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a", max_bytes=2000, refuse_when_full=True)
    spool.open()
    with pytest.raises(SpoolUnavailable, match="spool_full"):
        for i in range(100):
            await spool.append(rec(i))
    assert not spool.writable
    spool.close()
    alerting = Spool(tmp_path / "b", max_bytes=2000, refuse_when_full=False)
    alerting.open()
    for i in range(100):
        await alerting.append(rec(i))
    assert alerting.over_limit and alerting.writable
    alerting.close()


def test_one_writer_per_spool_directory(tmp_path: Path) -> None:
    from gateway.audit.spool import writer_active

    first = Spool(tmp_path)
    first.open()
    assert writer_active(tmp_path)
    with pytest.raises(SpoolUnavailable, match="in use by another process"):
        Spool(tmp_path).open()
    first.close()
    assert not writer_active(tmp_path)
    second = Spool(tmp_path)
    second.open()  # free again once the first closed
    second.close()
