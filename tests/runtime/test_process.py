"""The real `pd-gateway serve`: crash safety, shutdown, streaming memory, spool faults.

`serve` is a supervisor and one worker by default (decision 030); the worker answers requests
and writes its chain in ``<spool_dir>/w0``, so "the process" below is the one that serves.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    HandlerUpstream,
    Keys,
    Upstream,
    chained_seqs,
    gateway_events,
    gateway_spools,
)
from tests.process import run_gateway

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("durability", ["fsync", "batch"])
async def test_sigkill_right_after_responses_loses_no_event(
    tmp_path: Path, keys: Keys, upstream: Upstream, durability: str
) -> None:
    """No audit, no access: every response a client got has its decision *and* outcome on disk."""
    n = 300
    token = keys.token("alice", ["hr_officer"])
    denied = keys.token("bob", ["accountant"])
    with run_gateway(tmp_path, keys, upstream.url, audit={"durability": durability}) as gp:
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> int:
                tok = token if i % 3 else denied
                async with s.get(
                    f"{gp.url}/hr/medical/{i}", headers={"Authorization": f"Bearer {tok}"}
                ) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(n)))
        gp.crash()  # SIGKILL, the serving process and its supervisor, right after the last response
    events = gateway_events(gp.spool)
    assert len(events) == n
    for spool in gateway_spools(gp.spool):  # each chain: every number once, in order
        numbers = chained_seqs(spool)
        assert numbers == list(range(1, len(numbers) + 1))
    assert sorted(e["status"] for e in events) == sorted(statuses)
    assert all(e["outcome"] == "complete" for e in events)
    assert sum(1 for e in events if e["decision"] == "allow") == len(upstream.seen)


async def test_sigterm_drains_in_flight_requests_and_flushes_the_spool(
    tmp_path: Path, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.7)
        return web.json_response({"ok": True})

    url = await upstream_serving(slow)
    token = keys.token("alice", ["hr_officer"])
    with run_gateway(tmp_path, keys, url, audit={"durability": "batch"}) as gp:
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.get(
                    f"{gp.url}/hr/employees/1", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    await r.read()
                    return r.status

            tasks = [asyncio.ensure_future(one()) for _ in range(5)]
            await started.wait()
            await asyncio.sleep(0.1)
            gp.proc.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*tasks)
            code = await asyncio.to_thread(gp.proc.wait, 30)
    assert statuses == [200] * 5
    assert code == 0
    events = gateway_events(gp.spool)
    assert [e["outcome"] for e in events] == ["complete"] * 5


async def test_large_bodies_stream_both_ways_without_buffering(
    tmp_path: Path, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    size = 256 * 1024 * 1024
    chunk = b"z" * (256 * 1024)
    received = 0

    async def sink_and_source(request: web.Request) -> web.StreamResponse:
        nonlocal received
        async for c in request.content.iter_any():
            received += len(c)
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        for _ in range(size // len(chunk)):
            await resp.write(chunk)
        return resp

    url = await upstream_serving(sink_and_source, client_max_size=0)
    token = keys.token("alice", ["hr_officer"])

    async def upload():  # type: ignore[no-untyped-def]
        for _ in range(size // len(chunk)):
            yield chunk

    with run_gateway(tmp_path, keys, url, proxy={"max_body_bytes": 2 * size}) as gp:
        baseline = gp.rss_peak_kib()
        got = 0
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{gp.url}/hr/employees",
                data=upload(),
                headers={"Authorization": f"Bearer {token}"},
            ) as r,
        ):
            assert r.status == 200
            async for c in r.content.iter_any():
                got += len(c)
        growth_mib = (gp.rss_peak_kib() - baseline) / 1024
    assert received == size and got == size
    # 512 MiB went through; a buffering proxy would have grown by hundreds of MiB.
    assert growth_mib < 48, f"gateway peak RSS grew by {growth_mib:.0f} MiB"
    (event,) = gateway_events(gp.spool)
    assert event["bytes_in"] == size and event["bytes_out"] == size


def _sample(text: str, name: str, **labels: str) -> float:
    """A sample of the gateway's /metrics (every process's, each under its ``worker`` label)."""
    (value,) = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and s.labels == labels
    ]
    return value


def _limit_file_size() -> None:
    # A real write failure from the kernel: files may not grow past 4 KiB (EFBIG), and the
    # signal that would kill the process for it is ignored so the write returns the error.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


async def test_spool_write_failure_refuses_requests_with_503_and_never_forwards_them(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    token = keys.token("alice", ["hr_officer"])
    statuses: list[int] = []
    cut = 0  # forwarded, but the outcome could not be recorded: a streamed answer is cut
    with run_gateway(tmp_path, keys, upstream.url, preexec=_limit_file_size) as gp:
        async with aiohttp.ClientSession() as s:
            for i in range(150):  # ~40 failures, each hitting a decision or an outcome
                auth = {"Authorization": f"Bearer {token}"}
                async with s.get(f"{gp.url}/hr/employees/{i}", headers=auth) as r:
                    try:
                        body = await r.json()
                    except aiohttp.ClientPayloadError:
                        cut += 1
                        continue
                    statuses.append(r.status)
                    if r.status == 503:
                        assert body["error"] == "audit_unavailable"
                        assert body["request_id"] == r.headers["X-Request-Id"]
            async with s.get(f"{gp.admin}/metrics") as r:
                metrics = await r.text()
        log = (tmp_path / "gateway.log").read_text()
    assert 503 in statuses
    assert _sample(metrics, "pdgw_spool_errors_total", worker="w0", reason="write_failed") >= 1
    assert "audit spool write failed" in log
    # Every request that reached the upstream has its access on record (no audit, no access);
    # one whose outcome could not be recorded was withheld: cut if it was streaming, a 503 if it
    # was small and read whole before anything was sent (decision 032).
    events = gateway_events(gp.spool)
    assert len(upstream.seen) == len(events)
    served = [e for e in events if e["outcome"] == "complete"]
    assert len(served) == statuses.count(200)


async def test_the_connection_gate_and_head_timeout_hold_in_the_real_process(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """`pd-gateway serve` runs on uvloop, whose transports differ from asyncio's: the refusal
    path and the head timeout are checked there, not only in-process."""
    proxy = {"client_max_connections_per_address": 2, "client_header_timeout_seconds": 1}
    with run_gateway(tmp_path, keys, upstream.url, proxy=proxy) as gp:
        port = int(gp.url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):
            refused = await reader.read()
        writer.close()
        for r, _ in held:  # idle, never sending a request head: closed by the head timeout
            async with asyncio.timeout(5):
                assert await r.read() == b""
        for _, w in held:
            w.close()
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{gp.admin}/metrics") as r,
        ):
            metrics = await r.text()
        assert gp.proc.poll() is None  # still serving
    assert refused.startswith(b"HTTP/1.1 503") and b"X-Request-Id: " in refused
    reason = "too_many_connections_from_address"
    refusals = _sample(
        metrics, "pdgw_connections_refused_total", worker="w0", listener="proxy", reason=reason
    )
    assert refusals == 1


async def test_tls_on_the_proxy_listener_in_the_real_process(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    from gateway.core import tls
    from tests.certs import CA

    ca = CA(tmp_path, "org")
    pair = ca.issue("gateway", server=True)
    listen = {"proxy": {"tls": {"cert_file": str(pair.cert), "key_file": str(pair.key)}}}
    token = keys.token("alice", ["hr_officer"])
    with run_gateway(tmp_path, keys, upstream.url, listen=listen) as gp:
        assert gp.url.startswith("https://")
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"{gp.url}/hr/employees/1",
                headers={"Authorization": f"Bearer {token}"},
                ssl=tls.client_context(ca.cert_file),
            ) as r,
        ):
            assert r.status == 200
    (seen,) = upstream.seen
    assert seen.headers["x-forwarded-proto"] == ["https"]


@pytest.mark.parametrize("store", [False, True], ids=["spool-only", "with-store"])
async def test_a_second_gateway_on_the_same_spool_exits_with_a_one_line_message(
    tmp_path: Path, keys: Keys, upstream: Upstream, store: bool
) -> None:
    """The writer lock (spool) or the shipper lock (store configured) is taken at start-up: the
    second instance names the directory, exits 1 and prints no traceback."""
    overrides: dict[str, object] = {}
    if store:
        overrides["store"] = {"kind": "embedded", "path": str(tmp_path / "chdb")}
    with run_gateway(tmp_path, keys, upstream.url, **overrides) as gp:
        second = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "gateway.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gp.proc.poll() is None  # the first one keeps serving
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    message = [line for line in second.stderr.splitlines() if not line.startswith("{")]
    assert message == [
        f"pd-gateway: {tmp_path / 'gateway.yaml'}: audit.spool_dir {gp.spool} is in use by "
        "another gateway or replay; stop it or give this instance its own spool_dir"
    ]


async def test_a_second_gateway_on_the_same_ports_exits_with_a_one_line_message(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    with run_gateway(tmp_path, keys, upstream.url) as gp:
        data = yaml.safe_load((tmp_path / "gateway.yaml").read_text())
        data["audit"]["spool_dir"] = str(tmp_path / "other-spool")
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump(data))
        second = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(other)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gp.proc.poll() is None
    assert second.returncode == 1
    message = [line for line in second.stderr.splitlines() if not line.startswith("{")]
    proxy, admin = data["listen"]["proxy"]["port"], data["listen"]["admin"]["port"]
    assert message == [
        f"pd-gateway: {other}: port {proxy} (listen.proxy) or {admin} (listen.admin) is already in use"
    ]
