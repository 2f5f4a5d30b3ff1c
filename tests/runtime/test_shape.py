"""One shape (decision 030): `pd-gateway serve` is a supervisor that owns the store and a worker
that serves requests, also without `--workers`; the serving process never loads a store's library;
a spool a single-process gateway of an earlier release left continues as the supervisor's chain."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.audit.store.factory import open_store
from gateway.config.load import load_config
from gateway.runtime.app import build
from gateway.testing.chserver import ClickHouseServer
from tests.audit.test_store import _read_embedded
from tests.cli.test_investigate_process import _cli
from tests.conftest import (
    Keys,
    Upstream,
    chained_seqs,
    config_dict,
    gateway_spools,
    run_cli,
    spool_events,
    spool_records,
    write_config,
)
from tests.process import GatewayProcess, run_gateway
from tests.stores import count, fresh_database, store_config, store_section, wait_for

pytestmark = pytest.mark.slow

# What a process that loads a store's library maps: chdb's engine, Arrow, clickhouse-driver's
# C extensions (each is a shared object of its package's directory).
STORE_LIBRARIES = ("/chdb/", "/chdb_core.libs/", "/pyarrow/", "/clickhouse_driver/")


def _mapped(pid: int) -> set[str]:
    """The files a process has mapped (its shared objects among them)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {parts[5] for line in lines if len(parts := line.split(maxsplit=5)) == 6}


def _store_libraries(pid: int) -> set[str]:
    return {f for f in _mapped(pid) if any(lib in f for lib in STORE_LIBRARIES)}


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


async def _get(gp: GatewayProcess, token: str, paths: list[str]) -> list[int]:
    async with aiohttp.ClientSession() as s:

        async def one(path: str) -> int:
            async with s.get(gp.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(p) for p in paths)))


@pytest.mark.timeout(180)
async def test_serve_without_workers_is_a_supervisor_that_owns_the_store_and_a_worker_that_serves(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    n = 50
    store = {"kind": "embedded", "path": str(tmp_path / "chdb"), "batch_max_age_ms": 100}
    token = keys.token("alice", ["hr_officer"])
    with run_gateway(tmp_path, keys, upstream.url, store=store) as gp:
        worker = gp.worker_pid()
        assert _children(gp.proc.pid) == {worker}  # one worker, the supervisor's child
        assert [p.name for p in gateway_spools(gp.spool)] == ["spool", "w0"]
        paths = [f"/hr/employees/{i}" for i in range(n)]
        assert await _get(gp, token, paths) == [200] * n
        # The serving process never loaded chdb, Arrow or clickhouse-driver; the supervisor,
        # which ships into the embedded store, did (so the check can see them).
        assert _store_libraries(worker) == set()
        assert any("/chdb/" in f for f in _store_libraries(gp.proc.pid))
        assert gp.kill(signal.SIGTERM) == 0
    # The requests are the worker's records; the supervisor's chain holds its own only.
    served = spool_events(gp.serving_spool())
    assert sorted(e["path"] for e in served) == sorted(paths)
    assert spool_events(gp.spool) == []
    rows = _read_embedded(
        tmp_path / "chdb",
        "pd_audit",
        "SELECT instance, count() AS n FROM pd_audit.access_events GROUP BY instance",
    )
    assert {r["instance"]: int(r["n"]) for r in rows} == {"gw-test-w0": n}


@pytest.mark.timeout(180)
async def test_a_workers_key_in_the_config_sets_the_number_and_the_command_line_overrides_it(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    with run_gateway(tmp_path, keys, upstream.url, workers=2) as gp:
        assert len(_children(gp.proc.pid)) == 2
        assert gp.kill(signal.SIGTERM) == 0
    with run_gateway(tmp_path, keys, upstream.url, workers=2, args=("--workers", "1")) as gp:
        assert _children(gp.proc.pid) == {gp.worker_pid()}
        assert gp.kill(signal.SIGTERM) == 0


@pytest.mark.timeout(240)
async def test_a_single_process_spool_of_an_earlier_release_continues_as_the_supervisors_chain(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """An earlier release served from one process on ``spool_dir``: its chain (instance
    ``gw-test``) is carried on by the supervisor, shipped with the new worker's, verified whole;
    the IdP role sets it had seen are the worker's baseline, so a role change made meanwhile is
    recorded as a change (9.2.7), not taken for a first sight."""
    # The earlier release's single process, as the in-process harness builds it (no store yet).
    config = write_config(tmp_path, config_dict(tmp_path, upstream.url), keys)
    before = keys.token("alice", ["hr_officer"])
    proxy_app, _ = build(load_config(config))
    async with TestClient(TestServer(proxy_app)) as client:
        for i in range(3):
            async with client.get(
                f"/hr/employees/{i}", headers={"Authorization": f"Bearer {before}"}
            ) as r:
                assert r.status == 200
    spool = tmp_path / "spool"
    old = chained_seqs(spool)
    assert len(spool_events(spool)) == 3 and (spool / "idp-roles.json").exists()

    store = {"kind": "embedded", "path": str(tmp_path / "chdb"), "batch_max_age_ms": 100}
    after = keys.token("alice", ["hr_officer", "accountant"])  # changed at the IdP meanwhile
    token_file = tmp_path / "token"
    token_file.write_text(keys.token("sam", ["security_officer"]))
    token_file.chmod(0o600)
    with run_gateway(tmp_path, keys, upstream.url, store=store) as gp:
        assert await _get(gp, after, ["/hr/employees/9"]) == [200]
        # A reading of the trail through the admin API: recorded by the supervisor (9.2.6).
        out = await asyncio.to_thread(_cli, gp.admin, token_file, "activity", "alice")
        assert out.returncode == 0, out.stderr
        assert gp.kill(signal.SIGTERM) == 0

    (change,) = [r for r in spool_records(gp.serving_spool()) if r["kind"] == "permission_change"]
    assert change["change_kind"] == "idp_roles_changed"
    assert (change["rule_before"], change["rule_after"]) == (
        "roles: hr_officer",
        "roles: accountant,hr_officer",
    )
    rows = _read_embedded(
        tmp_path / "chdb",
        "pd_audit",
        "SELECT instance, seq, outcome_seq, path FROM pd_audit.access_events ORDER BY seq",
    )
    mine = [r for r in rows if r["instance"] == "gw-test"]
    # One chain: the earlier release's three accesses, then the supervisor's own record of the
    # reading, numbered on from where the old chain ended.
    assert [r["path"] for r in mine[:3]] == [f"/hr/employees/{i}" for i in range(3)]
    numbers = sorted(int(n) for r in mine for n in (r["seq"], r["outcome_seq"]) if int(n))
    assert numbers[: len(old)] == old and numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) > len(old)
    assert [r["path"] for r in rows if r["instance"] == "gw-test-w0"] == ["/hr/employees/9"]
    verify = run_cli(
        "audit",
        "verify",
        "--config",
        str(config),
        "--public-key",
        str(tmp_path / "checkpoint-key.pub"),
        "--json",
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert {i["instance"] for i in report["instances"]} == {"gw-test", "gw-test-w0"}


@pytest.mark.timeout(120)
async def test_connections_made_while_the_worker_starts_again_wait_and_are_served(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """The supervisor keeps the worker's listening socket open: a request sent while the only
    worker is dead waits in the socket's queue and is answered by the worker started again."""
    token = keys.token("alice", ["hr_officer"])
    with run_gateway(tmp_path, keys, upstream.url) as gp:
        old = gp.worker_pid()
        gp.crash_worker()
        assert await _get(gp, token, ["/hr/employees/1"]) == [200]
        assert gp.worker_pid() != old
        assert gp.kill(signal.SIGTERM) == 0
    served = spool_events(gp.serving_spool())
    assert [e["status"] for e in served] == [200]


def _drop_rows(store: Any, table: str, where: str) -> None:
    """What a store administrator can do: remove rows for good (a copy without them)."""
    db = store.database
    store.execute(f"CREATE TABLE {db}.kept AS {db}.{table}")
    store.execute(f"INSERT INTO {db}.kept SELECT * FROM {db}.{table} WHERE NOT ({where})")
    store.execute(f"TRUNCATE TABLE {db}.{table}")
    store.execute(f"INSERT INTO {db}.{table} SELECT * FROM {db}.kept")
    store.execute(f"DROP TABLE {db}.kept")


@pytest.mark.timeout(180)
async def test_verify_given_the_admin_url_checks_every_chains_live_head(
    tmp_path: Path, keys: Keys, upstream: Upstream, ch_server: ClickHouseServer
) -> None:
    """9.1.8, decision 012: the newest accesses deleted from the store, with the checkpoints that
    named them, are invisible to the store alone; the worker's live signed head, which the admin
    URL serves beside the supervisor's (`/checkpoints`), shows the truncation."""
    section = store_section("clickhouse", fresh_database(), chdb_dir=tmp_path, server=ch_server)
    store = open_store(store_config(section), apply_schema=True)
    try:
        with run_gateway(
            tmp_path,
            keys,
            upstream.url,
            store=section,
            audit={"durability": "batch", "checkpoint_interval_seconds": 0.2},
        ) as gp:
            token = keys.token("alice", ["hr_officer"])
            for i in range(6):  # one after another: each access followed by its outcome
                assert await _get(gp, token, [f"/hr/employees/{i}"]) == [200]
            worker = "gw-test-w0"

            def heads() -> dict[str, dict[str, Any]]:
                with urllib.request.urlopen(gp.admin + "/checkpoints", timeout=5) as r:
                    data = json.load(r)
                assert data["unavailable"] == [] or data["heads"] == []  # none, or every one
                return {h["instance"]: h for h in data["heads"]}

            def settled() -> bool:  # the worker's head covers its last record, and is shipped
                last = max(chained_seqs(gp.serving_spool()))
                head = heads().get(worker)
                return (
                    head is not None
                    and head["seq"] == last
                    and count(store, "chain_checkpoints", f"instance = '{worker}' AND seq = {last}")
                    == 1
                )

            await asyncio.to_thread(wait_for, settled, 30, "the worker's head signed and shipped")
            assert set(heads()) == {"gw-test", worker}
            cfg = str(tmp_path / "gateway.yaml")
            verify = ("audit", "verify", "--config", cfg, "--public-key")
            verify += (str(tmp_path / "checkpoint-key.pub"),)
            ok = run_cli(*verify, "--gateway", gp.admin)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert f"{worker}: records #1-" in ok.stdout and "gw-test: records" in ok.stdout
            # The last two requests' records and every checkpoint naming them, deleted.
            last = max(chained_seqs(gp.serving_spool()))
            cut = f"instance = '{worker}' AND greatest(seq, outcome_seq) > {last - 4}"
            _drop_rows(store, "access_events", cut)
            _drop_rows(store, "chain_checkpoints", f"instance = '{worker}' AND seq > {last - 4}")
            alone = run_cli(*verify)
            assert alone.returncode == 0, alone.stdout  # what the store alone cannot tell
            caught = run_cli(*verify, "--gateway", gp.admin)
            assert caught.returncode == 1, caught.stdout
            assert f"{worker} #{last}: truncated" in caught.stdout
    finally:
        store.close()
