"""`pd-gateway serve --workers N` as real processes: a supervisor that owns the store and the admin
port, workers sharing the proxy port (decisions 016, 030; one worker: tests/runtime/test_shape.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.fsutil import exclusive_lock
from gateway.core.tasks import spawn
from tests.audit.test_store import _read_embedded
from tests.cli.test_investigate_process import _cli
from tests.conftest import (
    ROOT,
    HandlerUpstream,
    Keys,
    Upstream,
    chained_seqs,
    config_dict,
    run_cli,
    spool_events,
    spool_records,
    write_config,
)
from tests.process import GatewayProcess, run_gateway

pytestmark = pytest.mark.slow

WORKERS = ("--workers", "2")


async def _requests(
    gp: GatewayProcess, keys: Keys, n: int, path: str = "/hr/medical", token: str = ""
) -> list[int]:
    """``n`` requests, each on a new connection (the kernel spreads connections, not requests)."""
    token = token or keys.token("alice", ["hr_officer"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

        async def one(i: int) -> int:
            async with s.get(
                f"{gp.url}{path}/{i}", headers={"Authorization": f"Bearer {token}"}
            ) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def _worker(gp: GatewayProcess, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((gp.spool / name / "worker.json").read_text())
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _metrics(gp: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(gp.admin + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _sum(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v
        for (n, ls), v in metrics.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


@pytest.mark.timeout(240)
async def test_two_workers_share_the_port_keep_a_chain_each_and_the_supervisor_ships_all(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    n = 200
    store = {"kind": "embedded", "path": str(tmp_path / "chdb"), "batch_max_age_ms": 100}
    with run_gateway(
        tmp_path, keys, upstream.url, args=WORKERS, store=store, audit={"durability": "batch"}
    ) as gp:
        pids = [_worker(gp, f"w{i}")["pid"] for i in range(2)]
        statuses = await _requests(gp, keys, n)
        assert statuses == [200] * n
        metrics = _metrics(gp)
        # One view of every process: each worker's own counters, under a `worker` label.
        served = {w: _sum(metrics, "pdgw_requests_total", worker=w) for w in ("w0", "w1")}
        assert served["w0"] > 0 and served["w1"] > 0
        assert sum(served.values()) == n
        assert _sum(metrics, "pdgw_requests_total", worker="supervisor") == 0
        assert _sum(metrics, "pdgw_ready", worker="w0") == 1
        # The shipper's families for a worker come from the supervisor, which runs it.
        assert ("pdgw_store_up", (("worker", "w1"),)) in metrics
        with urllib.request.urlopen(gp.admin + "/readyz", timeout=5) as r:
            checks = json.load(r)["checks"]
        assert checks["worker_w0"] and checks["worker_w1"]
        with urllib.request.urlopen(gp.admin + "/workers/w1/checkpoint", timeout=5) as r:
            assert json.load(r)["instance"] == "gw-test-w1"
        # The audit query API on the admin port reads the store the supervisor owns (9.2.6).
        token_file = tmp_path / "token"
        token_file.write_text(keys.token("sam", ["security_officer"]))
        token_file.chmod(0o600)
        deadline = time.monotonic() + 30
        while True:
            out = _cli(gp.admin, token_file, "activity", "alice", "--format", "ndjson")
            assert out.returncode == 0, out.stderr
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            if len(rows) == n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert sorted(r["path"] for r in rows) == sorted(f"/hr/medical/{i}" for i in range(n))
        code = gp.kill(signal.SIGTERM)
    assert code == 0
    assert not any(_alive(pid) for pid in pids), "a worker outlived the supervisor"
    per_worker = [spool_events(gp.spool / f"w{i}") for i in range(2)]
    assert all(per_worker) and sum(len(e) for e in per_worker) == n
    for i in range(2):
        seqs = chained_seqs(gp.spool / f"w{i}")
        assert seqs == list(range(1, len(seqs) + 1))
        assert {
            r["instance"] for r in spool_records(gp.spool / f"w{i}") if r["kind"] == "start"
        } == {f"gw-test-w{i}"}
    # Nothing left unshipped: every access is in the store, shipped by the one owner.
    rows = _read_embedded(
        tmp_path / "chdb",
        "pd_audit",
        "SELECT instance, count() AS n FROM pd_audit.access_events GROUP BY instance",
    )
    counts = {r["instance"]: int(r["n"]) for r in rows}
    queries = counts.pop("gw-test")  # the audit API's reads, recorded by the supervisor (9.2.6)
    assert queries >= 1
    assert counts == {f"gw-test-w{i}": len(per_worker[i]) for i in range(2)}
    verify = run_cli(
        "audit",
        "verify",
        "--config",
        str(tmp_path / "gateway.yaml"),
        "--public-key",
        str(tmp_path / "checkpoint-key.pub"),
        "--json",
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert {i["instance"] for i in report["instances"]} == {"gw-test", "gw-test-w0", "gw-test-w1"}


@pytest.mark.timeout(180)
async def test_a_killed_worker_is_started_again_and_its_chain_continues(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    with run_gateway(tmp_path, keys, upstream.url, args=WORKERS) as gp:
        await _requests(gp, keys, 40)
        before = len(chained_seqs(gp.spool / "w0"))
        old = _worker(gp, "w0")["pid"]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "w0 was not started again"
            try:
                if _worker(gp, "w0")["pid"] != old:
                    break
            except (FileNotFoundError, ValueError):
                pass
            await asyncio.sleep(0.1)
        while True:  # ready again, behind the supervisor's /readyz
            try:
                with urllib.request.urlopen(gp.admin + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await _requests(gp, keys, 60) == [200] * 60
        assert _sum(_metrics(gp), "pdgw_worker_restarts_total", worker="w0") == 1
        assert gp.kill(signal.SIGTERM) == 0
    seqs = chained_seqs(gp.spool / "w0")
    assert len(seqs) > before  # the new run wrote on
    assert seqs == list(range(1, len(seqs) + 1))  # one chain: no number twice, none missing
    starts = [r for r in spool_records(gp.spool / "w0") if r["kind"] == "start"]
    assert len(starts) == 2 and {r["instance"] for r in starts} == {"gw-test-w0"}


@pytest.mark.timeout(180)
async def test_a_hung_worker_is_killed_and_started_again(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """A worker whose event loop is stuck (stopped here with SIGSTOP) still holds its share of the
    proxy port and the pod's liveness probe asks the supervisor: the supervisor kills it after
    HANG_LIMIT_SECONDS without an answer to /healthz, and starts it again."""
    from gateway.runtime.supervisor import HANG_CHECK_SECONDS, HANG_LIMIT_SECONDS

    with run_gateway(tmp_path, keys, upstream.url) as gp:
        assert await _requests(gp, keys, 5) == [200] * 5
        old = _worker(gp, "w0")["pid"]
        os.kill(old, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            deadline = stopped + HANG_LIMIT_SECONDS + 3 * HANG_CHECK_SECONDS + 60
            while True:
                assert time.monotonic() < deadline, "the hung w0 was not started again"
                with contextlib.suppress(FileNotFoundError, ValueError):
                    if _worker(gp, "w0")["pid"] != old:
                        break
                await asyncio.sleep(0.2)
            assert time.monotonic() - stopped >= HANG_LIMIT_SECONDS  # not before the limit
            assert not _alive(old)
            while True:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(gp.admin + "/readyz", timeout=5) as r,
                ):
                    if r.status == 200:
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        finally:  # never leave a stopped process behind, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGKILL)
        assert await _requests(gp, keys, 10) == [200] * 10
        assert _sum(_metrics(gp), "pdgw_worker_restarts_total", worker="w0") == 1
        assert gp.kill(signal.SIGTERM) == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "worker not answering; killed to be started again" in log


@pytest.mark.timeout(120)
async def test_sighup_and_a_policy_change_reach_every_worker(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """A permission withdrawn on disk and announced with SIGHUP to the supervisor is withdrawn by
    every worker, each recording the change in its own chain (9.2.7)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    for p in (ROOT / "policies").iterdir():
        if p.is_file():
            (policies / p.name).write_bytes(p.read_bytes())
    authz = {
        "model": str(policies / "model.conf"),
        "policy": str(policies / "policy.csv"),
        "watch_interval_seconds": 0,  # only SIGHUP (or the admin API) reloads
        "policy_admin_roles": ["security_officer"],
    }
    with run_gateway(tmp_path, keys, upstream.url, args=WORKERS, authz=authz) as gp:
        accountant = keys.token("bob", ["accountant"])
        assert await _requests(gp, keys, 10, "/hr/employees", accountant) == [200] * 10
        first = await _same_policy_everywhere(gp)
        policy = policies / "policy.csv"
        original = policy.read_text()
        without_accountants = original.replace("p, accountant, hr, employee, read\n", "")
        policy.write_text(without_accountants)
        gp.proc.send_signal(signal.SIGHUP)
        withdrawn = await _same_policy_everywhere(gp, other_than=first)
        assert await _requests(gp, keys, 20, "/hr/employees", accountant) == [403] * 20
        # The admin API puts a policy in force in the supervisor; every worker follows.
        sam = keys.token("sam", ["security_officer"])
        answer = await _put_policy(gp, sam, original, "T-2: accountants read personnel files again")
        assert answer["in_force_in_every_worker"] is True
        # Answered once every worker has it in force: no wait here (9.2.7, decision 030).
        assert await _requests(gp, keys, 20, "/hr/employees", accountant) == [200] * 20
        restored = await _same_policy_everywhere(gp, other_than=withdrawn)
        # A worker that cannot take the change in time (stopped here): the change is made and
        # recorded, and the answer says which worker does not enforce it yet.
        stopped = gp.worker_pid(1)
        os.kill(stopped, signal.SIGSTOP)
        try:
            answer = await _put_policy(gp, sam, without_accountants, "T-3: withdrawn again")
            assert answer["in_force_in_every_worker"] is False
            assert answer["workers_not_yet_in_force"] == ["w1"]
        finally:
            os.kill(stopped, signal.SIGCONT)
        await _same_policy_everywhere(gp, other_than=restored)  # w1 follows once it runs
        assert gp.kill(signal.SIGTERM) == 0
    for name in ("w0", "w1"):
        changes = [r for r in spool_records(gp.spool / name) if r["kind"] == "permission_change"]
        # withdrawn, restored, withdrawn again
        assert [c["rule_after"] == "" for c in changes] == [True, False, True]
    # The supervisor recorded each first: the store's view of each change names its actor.
    changes = [r for r in spool_records(gp.spool) if r["kind"] == "permission_change"]
    assert [c["actor"] for c in changes] == ["signal:SIGHUP", "sam", "sam"]


async def _put_policy(gp: GatewayProcess, token: str, policy: str, reason: str) -> Any:
    """`PUT /admin/policy` on the supervisor's admin port: its answer, which must be 200."""
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            gp.admin + "/admin/policy",
            json={"policy": policy, "reason": reason},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def _same_policy_everywhere(gp: GatewayProcess, other_than: str = "") -> str:
    """Wait until every process has one policy version in force, other than ``other_than``."""
    deadline = time.monotonic() + 20
    while True:
        versions = {
            dict(ls).get("worker"): dict(ls)["version"]
            for (name, ls), v in _metrics(gp).items()
            if name == "pdgw_policy_info" and v == 1
        }
        (version, *more) = set(versions.values()) or {""}
        if not more and len(versions) == 3 and version != other_than:
            return version
        assert time.monotonic() < deadline, versions
        await asyncio.sleep(0.2)


async def test_start_up_failures_name_the_port_or_the_spool_in_one_line(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """Ports held by another program or a spool held by another gateway: one line naming them,
    exit 1, nothing left running."""
    with run_gateway(tmp_path, keys, upstream.url) as gp:  # holds its spool
        config = tmp_path / "gateway.yaml"
        data = yaml.safe_load(config.read_text())
        data["listen"] = {"proxy": {"port": 0}, "admin": {"port": 0}}
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump(data))
        spool = run_cli("serve", "--config", str(other), *WORKERS, timeout=60)
        assert gp.proc.poll() is None
    # The proxy port held by a program that does not share it (no SO_REUSEPORT).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        data = yaml.safe_load(config.read_text())
        data["listen"]["proxy"]["port"] = held.getsockname()[1]
        config.write_text(yaml.safe_dump(data))
        ports = run_cli("serve", "--config", str(config), *WORKERS, timeout=60)
    for out in (ports, spool):
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
    listen = data["listen"]
    assert [line for line in ports.stderr.splitlines() if not line.startswith("{")] == [
        f"pd-gateway: {config}: port {listen['proxy']['port']} (listen.proxy) or "
        f"{listen['admin']['port']} (listen.admin) is already in use"
    ]
    assert [line for line in spool.stderr.splitlines() if not line.startswith("{")] == [
        f"pd-gateway: {other}: audit.spool_dir {gp.spool} is in use by "
        "another gateway or replay; stop it or give this instance its own spool_dir"
    ]


async def _admin_post(gp: GatewayProcess, path: str, token: str, body: dict[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gp.admin + path, json=body, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


@pytest.mark.timeout(120)
async def test_a_block_and_a_break_glass_session_made_on_the_admin_port_hold_in_every_worker(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """The admin APIs are the supervisor's; what they put in force is in force on every worker
    by the time they answer (6.5 for the block, 9.2.7 for the break-glass session)."""
    with run_gateway(tmp_path, keys, upstream.url, args=WORKERS) as gp:
        hr = keys.token("harriet", ["hr_officer"])
        frank = keys.token("frank", ["security_officer"])
        dpo = keys.token("dana", ["dpo"])
        assert set(await _requests(gp, keys, 20, "/hr/employees", frank)) == {403}
        body = {"minutes": 5, "justification": "INC-7: leaked payroll file"}
        internal = GatewayProcess(gp.proc, 0, _worker(gp, "w0")["admin_port"], gp.spool)
        # A worker's own admin port answers its supervisor's scrapes, not the admin APIs.
        assert await _admin_post(internal, "/admin/break-glass", frank, body) == 404
        assert await _admin_post(gp, "/admin/break-glass", frank, body) == 200
        assert await _requests(gp, keys, 40, "/hr/employees", frank) == [200] * 40

        assert set(await _requests(gp, keys, 20, "/hr/employees/emp-9?n=", hr)) == {200}
        body = {"subject": "emp-9", "action": "block", "reason": "subject's request 17"}
        assert await _admin_post(gp, "/admin/subject-blocks", dpo, body) == 200
        statuses = await _requests(gp, keys, 40, "/hr/employees/emp-9?n=", hr)
        assert statuses == [423] * 40
        metrics = _metrics(gp)
        assert _sum(metrics, "pdgw_subject_blocks_active", worker="w0") == 1
        assert _sum(metrics, "pdgw_break_glass_active", worker="w1") == 1
        assert gp.kill(signal.SIGTERM) == 0
    allowed = [
        e for w in ("w0", "w1") for e in spool_events(gp.spool / w) if e["reason"] == "break_glass"
    ]
    assert len(allowed) == 40
    started = [r for r in spool_records(gp.spool) if r["kind"] == "permission_change"]
    # Once each, by the supervisor: the block is a change of access rights too (9.2.7).
    assert [c["change_kind"] for c in started] == ["break_glass_started", "subject_blocked"]


@pytest.mark.timeout(180)
async def test_spools_of_workers_a_larger_run_left_behind_are_still_shipped(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    with run_gateway(tmp_path, keys, upstream.url, args=("--workers", "3")) as gp:
        assert await _requests(gp, keys, 90) == [200] * 90
        assert gp.kill(signal.SIGTERM) == 0
    written = {f"w{i}": len(spool_events(gp.spool / f"w{i}")) for i in range(3)}
    assert written["w2"] > 0
    store = {"kind": "embedded", "path": str(tmp_path / "chdb"), "batch_max_age_ms": 100}
    with run_gateway(tmp_path, keys, upstream.url, args=WORKERS, store=store) as gp:
        assert gp.kill(signal.SIGTERM) == 0
    rows = _read_embedded(
        tmp_path / "chdb",
        "pd_audit",
        "SELECT instance, count() AS n FROM pd_audit.access_events GROUP BY instance",
    )
    assert {r["instance"]: int(r["n"]) for r in rows} == {
        f"gw-test-{w}": n for w, n in written.items()
    }


@pytest.mark.timeout(120)
async def test_sigterm_drains_requests_in_flight_on_every_worker_and_ships_them(
    tmp_path: Path, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    waiting = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal waiting
        waiting += 1
        await asyncio.sleep(1.0)
        return web.json_response({"ok": True})

    url = await upstream_serving(slow)
    store = {"kind": "embedded", "path": str(tmp_path / "chdb"), "batch_max_age_ms": 100}
    with run_gateway(tmp_path, keys, url, args=WORKERS, store=store) as gp:
        pending = spawn(_requests(gp, keys, 30), name="in-flight")
        while waiting < 30:
            await asyncio.sleep(0.02)
        gp.proc.send_signal(signal.SIGTERM)
        statuses = await pending
        code = await asyncio.to_thread(gp.proc.wait, 60)
    assert statuses == [200] * 30 and code == 0
    events = [e for w in ("w0", "w1") for e in spool_events(gp.spool / w)]
    assert all(spool_events(gp.spool / w) for w in ("w0", "w1"))  # both were draining
    assert [e["outcome"] for e in events] == ["complete"] * 30
    rows = _read_embedded(
        tmp_path / "chdb",
        "pd_audit",
        "SELECT outcome, count() AS n FROM pd_audit.access_events GROUP BY outcome",
    )
    assert rows == [{"outcome": "complete", "n": 30}]


def test_a_worker_that_cannot_start_stops_the_whole_start_up_with_its_reason(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """w1's spool held by another process: w1 says so, the supervisor names w1, exits 1, and w0
    (which did start) does not outlive it."""
    data = config_dict(tmp_path, upstream.url)
    data["listen"] = {"proxy": {"port": 0}, "admin": {"port": 0}}
    config = write_config(tmp_path, data, keys)
    spool = Path(data["audit"]["spool_dir"])
    (spool / "w1").mkdir(parents=True)
    held = exclusive_lock(spool / "w1" / "writer.lock")
    try:
        out = run_cli("serve", "--config", str(config), *WORKERS, timeout=60)
    finally:
        os.close(held)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if not line.startswith("{")] == [
        f"pd-gateway: {config}: audit.spool_dir {spool / 'w1'} is in use by "
        "another gateway or replay; stop it or give this instance its own spool_dir",
        f"pd-gateway: {config}: worker w1 exited with 1 at start-up",
    ]
    w0 = json.loads((spool / "w0" / "worker.json").read_text())["pid"]
    deadline = time.monotonic() + 10
    while _alive(w0):
        assert time.monotonic() < deadline, "w0 outlived the supervisor"
        time.sleep(0.1)
