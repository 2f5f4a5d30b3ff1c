"""Tamper evidence (docs/decisions/012-hash-chain.md): the spool numbers and chains
every record it writes, gapless; signed checkpoints; `audit verify` finds an edited, a deleted
and an inserted row, and an edit whose chain was recomputed after it — in chdb and in Debian's
real clickhouse-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import chain, checkpoint
from gateway.audit.events import AccessEvent, PermissionChange
from gateway.audit.segments import list_segments, read_records
from gateway.audit.spool import Spool
from gateway.audit.store.base import AuditStore
from gateway.audit.store.factory import open_store
from gateway.audit.verify import StoreChain, verify_store
from gateway.core.errors import SpoolUnavailable
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import CHECKPOINT_KEY, GatewayFactory, Keys, Upstream, run_cli
from tests.stores import ENGINES, count, fresh_database, store_config, store_section, wait_for


def access(n: int) -> AccessEvent:
    return AccessEvent(
        f"e{n}", n, f"r{n}", "alice", ["hr_officer"], "127.0.0.1", "bearer", "", "GET", f"/hr/employees/{n}",
        "", "hr-employees", "hr", "employee", "read", [str(n)], "deny", "no_matching_rule", "",
        "v1", 403, outcome="complete",
    )  # fmt: skip


def spool_chain_problems(directory: Path) -> list[str]:
    """Recompute the chain from the spool's lines alone."""
    prev, expected, problems = chain.GENESIS, 1, []
    for rec in read_records(directory):
        if "hash" not in rec:
            continue
        if rec["seq"] != expected:
            problems.append(f"seq {rec['seq']} where {expected} was due")
        if chain.link(prev, chain.canonical_of(rec)) != rec["hash"]:
            problems.append(f"hash of {rec['seq']}")
        prev, expected = rec["hash"], rec["seq"] + 1
    return problems


async def test_the_spool_numbers_and_chains_every_record_across_restarts(tmp_path: Path) -> None:
    for run in range(3):
        spool = Spool(tmp_path, instance="gw-1")
        spool.open()
        await asyncio.gather(*(spool.append(access(run * 100 + i)) for i in range(50)))
        change = PermissionChange(
            f"c{run}", 1, "a", "rule_added", "r", "", "", "p, r, s, c, a", "v0", "v1", "t", "file"
        )
        await spool.append(change)
        spool.close()
    assert spool_chain_problems(tmp_path) == []
    assert spool.head.seq == 153


async def test_a_spool_holding_another_instances_chain_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, instance="gw-1")
    spool.open()
    await spool.append(access(1))
    spool.close()
    with pytest.raises(SpoolUnavailable, match="gw-1"):
        Spool(tmp_path, instance="gw-2").open()


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "48k") -> Iterator[Path]:
    """A real filesystem that fills up: a tmpfs of ``size`` (the tests run as root)."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
    if done.returncode != 0:
        pytest.fail("mounting a tmpfs failed: these tests need root, as CI runs them")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


async def test_a_full_disk_gives_numbers_back_makes_no_file_per_refusal_and_recovers_alone(
    tmp_path: Path,
) -> None:
    with tiny_disk(tmp_path / "disk", "64k") as disk:
        filler = disk / "other-files"  # what fills a disk in life: something else
        filler.write_bytes(b"x" * 40 * 1024)
        spool = Spool(disk / "spool", instance="gw-1")
        spool.open()
        refused = accepted = 0
        for i in range(300):  # ~400 bytes a record: the disk fills part way
            try:
                await spool.append(access(i))
                accepted += 1
            except SpoolUnavailable:
                refused += 1
        assert accepted and refused > 100
        assert not spool.healthy and not spool.writable
        # Refusals while unhealthy create no files: the failed segment and one probe's at most.
        assert len(list_segments(disk / "spool")) <= 3
        # Every record that reached the file has its number, 1..N, none given twice or skipped.
        assert spool_chain_problems(disk / "spool") == []
        filler.unlink()  # room again: the spool is healthy with no request at all
        deadline = time.monotonic() + 5
        while not spool.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert spool.healthy and spool.writable
        await spool.append(access(999))
        spool.close()
        assert spool_chain_problems(disk / "spool") == []
    assert spool.head.seq == accepted + 1


async def test_a_dead_or_stuck_sync_thread_refuses_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a bug or a hung disk cannot be produced on demand): fsync raising a
    non-OSError kills the sync thread; fsync blocking stands for a disk that stopped answering."""
    spool = Spool(tmp_path / "a", instance="gw-1", sync_timeout=0.5)
    spool.open()
    release = threading.Event()
    real_fsync = os.fsync

    def stuck(fd: int) -> None:
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr("gateway.audit.spool.os.fsync", stuck)
    t0 = time.monotonic()
    with pytest.raises(SpoolUnavailable, match="sync_timeout"):
        await spool.append(access(1))
    assert time.monotonic() - t0 < 2
    release.set()
    monkeypatch.setattr("gateway.audit.spool.os.fsync", real_fsync)
    spool.close()

    spool = Spool(tmp_path / "b", instance="gw-1", sync_timeout=30)
    spool.open()

    def broken(fd: int) -> None:
        raise RuntimeError("a bug in the sync thread")

    monkeypatch.setattr("gateway.audit.spool.os.fsync", broken)
    t0 = time.monotonic()
    with pytest.raises(SpoolUnavailable, match="sync_failed"):
        await spool.append(access(1))
    assert time.monotonic() - t0 < 2
    with pytest.raises(SpoolUnavailable):
        await spool.append(access(2))
    monkeypatch.setattr("gateway.audit.spool.os.fsync", real_fsync)
    spool.close()


# -- verify, on both engines --


async def _trail(
    kind: str,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    server: ClickHouseServer,
    n: int = 30,
) -> tuple[dict[str, Any], AuditStore, Path]:
    """A gateway's trail in the store: n requests, allowed and refused, then a clean stop
    (the final checkpoint is signed and shipped)."""
    section = store_section(kind, fresh_database(), chdb_dir=chdb_dir, server=server)
    gw = await make_gateway(upstream.url, store=section, audit={"checkpoint_interval_seconds": 0.2})
    hr = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    acc = {"Authorization": f"Bearer {keys.token('bob', ['accountant'])}"}
    for i in range(n):
        r = await gw.client.get(f"/hr/medical/{i}", headers=hr if i % 3 else acc)
        await r.read()
        await asyncio.sleep(0.01)
    await (await gw.client.get("/hr/medical/1")).read()  # no token: a refusal summary at the end
    await gw.client.close()  # cleanup: final checkpoint, spool closed, shipper drained
    store = open_store(store_config(section), apply_schema=False)
    await asyncio.to_thread(wait_for, lambda: count(store) >= n, 30, "events shipped")
    assert count(store, "refusal_summaries") == 1  # shipped in the drain at shutdown
    public = gw.spool_dir.parent / "checkpoint-key.pub"
    return section, store, public


def _rewrite(store: AuditStore, exprs: dict[str, str], where: str = "1") -> None:
    """What a store administrator can do: rewrite access_events with changed columns."""
    from gateway.audit.store.schema import ACCESS_EVENTS

    db = store.database
    cols = ", ".join(f"{exprs.get(c, f'`{c}`')} AS `{c}`" for c in ACCESS_EVENTS.column_names)
    store.execute(f"CREATE TABLE {db}.tampered AS {db}.access_events")
    store.execute(f"INSERT INTO {db}.tampered SELECT {cols} FROM {db}.access_events WHERE {where}")
    store.execute(f"TRUNCATE TABLE {db}.access_events")
    store.execute(f"INSERT INTO {db}.access_events SELECT * FROM {db}.tampered")
    store.execute(f"DROP TABLE {db}.tampered")


def _kinds(store: AuditStore, public: Path) -> set[tuple[str, int]]:
    report = verify_store(store, checkpoint.load_public_keys([public]))
    return {(p.kind, p.seq) for p in report.problems}


@pytest.mark.parametrize("kind", ENGINES)
async def test_verify_finds_edits_deletions_insertions_and_recomputed_chains(
    kind: str,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    _section, store, public = await _trail(kind, make_gateway, upstream, keys, chdb_dir, ch_server)
    keyring = checkpoint.load_public_keys([public])
    report = verify_store(store, keyring)
    assert report.ok, report.problems
    (inst,) = report.instances
    assert inst.anchored and inst.first_seq == 1 and inst.checkpoints >= 1
    assert inst.records == inst.last_seq  # every number from 1 to the head, once

    db = store.database
    denied = sorted(
        int(r["seq"])
        for r in store.select(f"SELECT seq FROM {db}.access_events WHERE decision = 'deny'")
    )
    edited, inserted, deleted = denied[1], denied[3], denied[5]

    # An edit: one denied access now names another user.
    _rewrite(store, {"user": f"if(seq = {edited}, 'mallory', user)"})
    assert _kinds(store, public) == {("hash_mismatch", edited)}
    _rewrite(store, {"user": f"if(seq = {edited}, 'bob', user)"})  # back as it was
    assert verify_store(store, keyring).ok

    # An insertion: a second row with a number already taken (a copy naming another user).
    from gateway.audit.store.schema import ACCESS_EVENTS

    cols = ", ".join(
        "'mallory' AS `user`" if c == "user" else f"`{c}`" for c in ACCESS_EVENTS.column_names
    )
    store.execute(
        f"INSERT INTO {db}.access_events SELECT {cols} FROM {db}.access_events "
        f"WHERE seq = {inserted}"
    )
    assert ("duplicate", inserted) in _kinds(store, public)
    _rewrite(store, {}, where=f"NOT (seq = {inserted} AND user = 'mallory')")
    assert verify_store(store, keyring).ok

    # A deletion.
    _rewrite(store, {}, where=f"seq != {deleted}")
    assert ("missing", deleted) in _kinds(store, public)
    store.close()


@pytest.mark.parametrize("kind", ENGINES)
async def test_an_edit_with_every_later_hash_recomputed_is_caught_by_the_signed_checkpoint(
    kind: str,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    _section, store, public = await _trail(kind, make_gateway, upstream, keys, chdb_dir, ch_server)
    source = StoreChain(store, "gw-test")
    lo, hi = source.bounds()
    records = source.records(lo, hi)
    # The forger changes one access's user and recomputes every hash from there on (they can:
    # the hash is public); they cannot sign a checkpoint.
    target = next(r["seq"] for r in records if r["kind"] == "access" and r["seq"] > 3)
    prev, new_hashes = chain.GENESIS, {}
    for rec in records:
        if rec["seq"] == target:
            rec = {**rec, "user": "mallory"}
        digest = chain.link(prev, chain.canonical_of(rec))
        if rec["seq"] >= target:
            new_hashes[rec["seq"]] = digest
        prev = digest
    seqs = sorted(new_hashes)
    arr_from = "[" + ",".join(str(s) for s in seqs) + "]"
    arr_to = "[" + ",".join(f"'{new_hashes[s]}'" for s in seqs) + "]"
    _rewrite(
        store,
        {
            "user": f"if(seq = {target}, 'mallory', user)",
            "hash": f"transform(seq, {arr_from}, {arr_to}, hash)",
            "outcome_hash": f"transform(outcome_seq, {arr_from}, {arr_to}, outcome_hash)",
        },
    )
    kinds = _kinds(store, public)
    # The forger rewrote access_events; the refusal summary after them (another table) no
    # longer links to the forged chain: found too.
    others = {r["seq"] for r in records if r["kind"] not in ("access", "outcome")}
    assert kinds and {k for k, seq in kinds if seq not in others} == {"checkpoint_mismatch"}
    # Truncation of the newest records: the last signed checkpoint names them.
    top = max(s for s in seqs)
    _rewrite(store, {}, where=f"seq < {top - 3} AND outcome_seq < {top - 3}")
    store.execute(f"TRUNCATE TABLE {store.database}.refusal_summaries")  # the newest record
    assert "truncated" in {k for k, _ in _kinds(store, public)}
    store.close()


def test_verify_cli_on_the_real_server_exits_non_zero_on_tampering(
    tmp_path: Path, keys: Keys, ch_server: ClickHouseServer
) -> None:
    """The command an auditor runs, as a process, against the real server."""
    from tests.conftest import config_dict, write_config

    section = store_section("clickhouse", fresh_database(), chdb_dir=tmp_path, server=ch_server)
    data = config_dict(tmp_path, "http://127.0.0.1:1", store=section)
    path = write_config(tmp_path, data, keys)
    # A trail written by a spool and shipped by `audit replay`: the same code paths as serve.
    spool_dir = Path(data["audit"]["spool_dir"])

    async def write() -> None:
        spool = Spool(spool_dir, instance="gw-test")
        spool.open()
        signer = checkpoint.Signer.load(tmp_path / CHECKPOINT_KEY)
        for i in range(20):
            await spool.append(access(i))
        cp = checkpoint.Checkpointer(spool, signer, 60)
        await cp.checkpoint()
        spool.close()

    asyncio.run(write())
    assert (
        run_cli("audit", "replay", "--spool", str(spool_dir), "--config", str(path)).returncode == 0
    )
    args = (
        "audit",
        "verify",
        "--config",
        str(path),
        "--public-key",
        str(tmp_path / "checkpoint-key.pub"),
    )
    ok = run_cli(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "chain intact" in ok.stdout
    store = open_store(store_config(section), apply_schema=False)
    _rewrite(store, {"path": "if(seq = 3, '/hr/employees/1', path)"})
    store.close()
    bad = run_cli(*args)
    assert bad.returncode == 1
    assert "gw-test #3: hash_mismatch" in bad.stdout


@pytest.mark.parametrize("kind", ["embedded"])
async def test_verify_since_a_checkpoint_covers_a_trail_whose_start_was_dropped(
    kind: str,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    """After the oldest rows were dropped (retention), `--since` checks the chain from the newest
    signed checkpoint before that time, linked to the head the gateway signed."""
    _section, store, public = await _trail(kind, make_gateway, upstream, keys, chdb_dir, ch_server)
    keyring = checkpoint.load_public_keys([public])
    cps = StoreChain(store, "gw-test").checkpoints()
    middle = next(cp for cp in cps if cp.seq > 5)
    _rewrite(store, {}, where=f"seq > {middle.seq} OR outcome_seq > {middle.seq}")
    report = verify_store(store, keyring, since_us=middle.ts_us)
    assert report.ok, report.problems
    (inst,) = report.instances
    assert inst.anchored and inst.first_seq == middle.seq + 1  # linked to the signed head
    store.close()


values = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
        st.integers(min_value=0, max_value=2**63 - 1),
        st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",))), max_size=3),
    ),
    max_size=30,
)


@given(values)
@settings(max_examples=500, deadline=None)
def test_the_canonical_form_is_the_documented_json_and_reads_back(vals: list[Any]) -> None:
    """Decision 012 defines the canonical form as compact UTF-8 JSON with non-ASCII as itself:
    what `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes. The fast encoder
    must give exactly those bytes, so any verifier can recompute a hash; and a spool line must
    decode to the same values."""
    form = chain.canonical("access", 2, "gw-1", 7, vals)
    stdlib = json.dumps(["access", 2, "gw-1", 7, *vals], ensure_ascii=False, separators=(",", ":"))
    assert form == stdlib.encode()
    line = chain.line(form, chain.link(chain.GENESIS, form))
    assert json.loads(line)["rec"][4:] == vals


def test_a_live_head_is_compared_as_a_running_gateway_writes_past_it(
    tmp_path: Path, keys: Keys, ch_server: ClickHouseServer
) -> None:
    """A running gateway signs its head every checkpoint interval and ships within a second, so
    the store holds records past the live head `audit verify --gateway` read: those are not a
    problem. An access numbered past the head but timed well before it was signed is one
    (inserted); and a chain whose live head is known but which has nothing in the store is
    reported whole as truncated (decisions 012, 030)."""
    from dataclasses import replace

    from tests.conftest import config_dict, write_config

    section = store_section("clickhouse", fresh_database(), chdb_dir=tmp_path, server=ch_server)
    data = config_dict(tmp_path, "http://127.0.0.1:1", store=section)
    path = write_config(tmp_path, data, keys)
    spool_dir = Path(data["audit"]["spool_dir"])
    signer = checkpoint.Signer.load(tmp_path / CHECKPOINT_KEY)
    now = time.time_ns() // 1000

    async def write(directory: Path, instance: str, times: list[int]) -> checkpoint.Checkpoint:
        """Records at ``times`` up to the head signed, then two more after it."""
        spool = Spool(directory, instance=instance)
        spool.open()
        for i, ts in enumerate(times):
            await spool.append(replace(access(i), ts_us=ts))
        head = await checkpoint.Checkpointer(spool, signer, 60).checkpoint()
        assert head is not None
        for i in range(2):
            await spool.append(replace(access(100 + i), ts_us=time.time_ns() // 1000))
        spool.close()
        return head

    head = asyncio.run(write(spool_dir, "gw-test", [now + i for i in range(10)]))
    gone = asyncio.run(write(tmp_path / "gone", "gw-gone", [now + i for i in range(3)]))
    replay = run_cli("audit", "replay", "--spool", str(spool_dir), "--config", str(path))
    assert replay.returncode == 0, replay.stderr
    store = open_store(store_config(section), apply_schema=False)
    keyring = checkpoint.load_public_keys([tmp_path / "checkpoint-key.pub"])
    try:
        assert verify_store(store, keyring, live=[head]).ok  # records past the head: fine
        report = verify_store(store, keyring, live=[head, gone])
        assert {(p.instance, p.kind) for p in report.problems} == {("gw-gone", "truncated")}

        async def insert_old() -> None:  # numbered after the head, timed two minutes before it
            spool = Spool(spool_dir, instance="gw-test")
            spool.open()
            await spool.append(replace(access(200), ts_us=head.ts_us - 120_000_000))
            spool.close()

        asyncio.run(insert_old())
        replay = run_cli("audit", "replay", "--spool", str(spool_dir), "--config", str(path))
        assert replay.returncode == 0, replay.stderr
        report = verify_store(store, keyring, live=[head])
        assert [p.kind for p in report.problems] == ["beyond_live_head"]
    finally:
        store.close()
