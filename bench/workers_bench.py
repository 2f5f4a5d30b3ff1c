"""Scaling of `pd-gateway serve --workers N` (decision 016): req/s at 1 and 2 workers.

The bench config of `make bench` (bench/run.py: bearer token, decision, subject, chained audit
record, shipping into the embedded store), durability batch, a 1 KiB answer from a one-worker
nginx upstream, wrk -t1 -c32. Nothing is pinned: the workers need every core, so wrk, the
upstream, the supervisor's shippers and the workers share the machine's cores (on a 2-core
machine they compete; the figures say what one box gives, not what the gateway would with
cores of its own). Interleaved rounds, medians.

    python bench/workers_bench.py            # BENCH_SECONDS=8 BENCH_ROUNDS=3 WORKERS=1,2
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    NGINX_UPSTREAM,
    ROOT,
    Keys,
    cpu_seconds,
    free_port,
    gateway_config,
    generate_checkpoint_key,
    rsa_keypair,
    wait_http,
    wait_ready,
    wrk,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WORKERS = [int(n) for n in os.environ.get("WORKERS", "1,2").split(",")]


def main() -> float:
    """Prints the workers table; returns req/s of the most workers over one worker's."""
    tmp = Path(tempfile.mkdtemp(prefix="pdgw-workers-bench-"))
    keys = Keys(*rsa_keypair(), public_pem="")
    (tmp / "jwks.json").write_text(json.dumps(keys.jwks()))
    token = keys.token("alice", ["hr_officer"], ttl=3600)
    key = tmp / "checkpoint.pem"
    generate_checkpoint_key(key, tmp / "checkpoint.pub")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        (tmp / "body.json").write_bytes(b"x" * 1024)
        tmp.chmod(0o755)
        (tmp / "up.conf").write_text(NGINX_UPSTREAM.format(d=tmp, port=up_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(subprocess.Popen([nginx, "-c", str(tmp / "up.conf")]))
        wait_http(upstream + "/")
        targets: dict[int, tuple[str, int]] = {}
        for n in WORKERS:
            port, admin = free_port(), free_port()
            cfg = gateway_config(tmp, "batch", upstream, port, admin, key)
            cfg["instance_id"] = f"bench-w{n}"
            cfg["audit"]["spool_dir"] = str(tmp / f"spool-{n}")  # type: ignore[index]
            cfg["store"]["path"] = str(tmp / f"chdb-{n}")  # type: ignore[index]
            path = tmp / f"gw-{n}.json"
            path.write_text(json.dumps(cfg))
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
            cmd += ["--log-level", "WARNING", "--workers", str(n)]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL))
            wait_ready(f"http://127.0.0.1:{admin}/readyz")
            targets[n] = (f"http://127.0.0.1:{port}/hr/employees/1001", procs[-1].pid)
        for url, _ in targets.values():  # warm up
            subprocess.run(
                ["wrk", "-t1", "-c8", "-d1s", "-H", f"Authorization: Bearer {token}", url],
                capture_output=True,
                check=True,
            )
        load = os.getloadavg()[0]
        rps: dict[int, list[float]] = {n: [] for n in targets}
        p99: dict[int, list[float]] = {n: [] for n in targets}
        cpu: dict[int, list[float]] = {n: [] for n in targets}
        for _ in range(ROUNDS):
            for n, (url, pid) in targets.items():
                before = cpu_seconds(pid)  # the supervisor and its workers
                r = wrk(url, token)
                after = cpu_seconds(pid)
                rps[n].append(r["rps"])
                p99[n].append(r["p99"])
                cpu[n].append((after - before) / r["requests"] * 1e6)
        print(
            f"\n## serve --workers N: wrk -t1 -c32, 1 KiB from nginx, durability batch, embedded "
            f"store; nothing pinned, {os.cpu_count()} CPUs shared with wrk and the upstream; "
            f"median of {ROUNDS} interleaved rounds; load average before: {load:.2f}"
        )
        print(f"{'workers':>7} {'req/s':>8} {'p99 ms':>7} {'CPU µs/req (all processes)':>27}")
        base = statistics.median(rps[WORKERS[0]])
        for n in targets:
            r = statistics.median(rps[n])
            print(
                f"{n:>7} {r:>8.0f} {statistics.median(p99[n]):>7.2f} "
                f"{statistics.median(cpu[n]):>27.0f}   ({r / base:.2f}x)   runs: "
                + ", ".join(f"{x:.0f}" for x in rps[n])
            )
        return statistics.median(rps[WORKERS[-1]]) / base
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
