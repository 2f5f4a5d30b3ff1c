"""`make bench`: figures, measured side by side in one run on this machine.

1. Proxy throughput and latency, side by side (docs/benchmarks.md): the nginx upstream directly,
   nginx proxy_pass (1 worker), a protocol-level uvloop + httptools proxy (bench/h1proxy.py), a bare
   aiohttp proxy and pd-gateway (durability batch and fsync, each without a store and shipping into
   the embedded store; token, authorisation, subjects, chained audit; fsync shipping into
   clickhouse-server), same 1 KiB response, interleaved rounds, proxies pinned to CPU 0 and wrk +
   upstream to CPU 1; req/s and p50/p99 at 32 connections, p50 at 1, CPU µs per request and
   resident memory of the proxy process, and the ratios gateway/bare and gateway/nginx.
   pd-gateway is what `serve` runs (decision 030): its worker — the process that serves — is the
   proxy process on CPU 0; its supervisor, which owns the store and ships, runs on CPU 1 beside
   the load generator and the upstream (as clickhouse-server does), and its CPU per request and
   memory are printed apart (`store µs/req`, `store MiB`).
2. Authorisation cost: a decision with 10 users / 10 rules beside 10,000 users / 3,000 rules,
   uncached (pycasbin's linear scan) and through the PolicyEngine's decision cache.
3. Token verification: first sight (RS256 verify) beside a cached repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.audit.checkpoint import generate as generate_checkpoint_key  # noqa: E402
from gateway.testing.chserver import ClickHouseServer, free_port  # noqa: E402
from tests.conftest import AUDIENCE, ISSUER, KID, Keys, rsa_keypair  # noqa: E402

DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = 32
H1 = "uvloop + httptools protocol-level proxy"
CH = "pd-gateway durability=fsync, store clickhouse-server"


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    return (
        ["taskset", "-c", cpu, *cmd]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() >= 2
        else cmd
    )  # type: ignore[operator]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def to_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n if unit == "ms" else n * 1000


def wrk(
    url: str, token: str, connections: int = CONNECTIONS, seconds: int | None = None
) -> dict[str, float]:
    out = subprocess.run(
        pinned(
            "1",
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds or DURATION}s",
                "--latency",
                "-H",
                f"Authorization: Bearer {token}",
                url,
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total}


def _family(pid: int) -> list[int]:
    """A process and its direct children (nginx's master and worker)."""
    out = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU of a process (all its threads) and its children, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _family(pid) if children else [pid]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_mib(pid: int, *, children: bool = True) -> float:
    kib = 0
    for p in _family(pid) if children else [pid]:
        with contextlib.suppress(OSError, StopIteration):
            line = next(
                x
                for x in Path(f"/proc/{p}/status").read_text().splitlines()
                if x.startswith("VmRSS")
            )
            kib += int(line.split()[1])
    return kib / 1024


NGINX_UPSTREAM = """worker_processes 1; daemon off; pid {d}/up.pid; error_log {d}/up-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{port} backlog=1024; keepalive_requests 1000000;
    location / {{ default_type application/json; root {d}; rewrite ^ /body.json break; }} }} }}
"""
NGINX_PROXY = """worker_processes 1; daemon off; pid {d}/proxy.pid; error_log {d}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off;
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} backlog=1024; keepalive_requests 1000000;
    location / {{ proxy_pass http://up; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"""


def gateway_config(
    tmp: Path,
    durability: str,
    upstream: str,
    port: int,
    admin: int,
    checkpoint_key: Path,
    *,
    label: str = "",
) -> dict[str, object]:
    """The whole pipeline as `make bench` measures it: bearer token, Casbin decision, subject from
    the path, the chained audit record made durable before forwarding, metrics in the worker;
    shipping into the embedded store by the supervisor."""
    return {
        "instance_id": f"bench-{label}{durability}",
        "listen": {"proxy": {"port": port}, "admin": {"port": admin}},
        "identity": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["RS256"],
            "jwks_file": str(tmp / "jwks.json"),
        },
        "authz": {
            "model": str(ROOT / "policies/model.conf"),
            "policy": str(ROOT / "policies/policy.csv"),
        },
        "audit": {
            "spool_dir": str(tmp / f"spool-{label}{durability}"),
            "durability": durability,
            "checkpoint_key_file": str(checkpoint_key),
        },
        # The full pipeline: the trail shipped into the embedded store as it comes (by the
        # supervisor, decision 030).
        "store": {"kind": "embedded", "path": str(tmp / f"chdb-{label}{durability}")},
        "proxy": {"trusted_proxies": []},
        "upstreams": {"hr": upstream},
        "routes": [
            {
                "name": "hr-employees",
                "prefix": "/hr/employees",
                "upstream": "hr",
                "system": "hr",
                "purpose": "hr_records",
                "category": "employee",
                "subject": {"path": "/hr/employees/{id}"},
            }
        ],
    }


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to append started processes to; every one is terminated and waited for at exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


@dataclass
class Single:
    """One proxy under test (the gateway or the bare proxy) and its nginx upstream, started by
    single(): what `make profile` and `make soak` drive with wrk."""

    token: str
    url: str  # a route of the bench config, through the proxy
    admin: int  # the gateway's admin port (0 for the bare proxy)
    pid: int  # the process that serves: the gateway's worker w0, or the bare proxy
    store_pid: int = 0  # the gateway's supervisor (the store, shipping); 0 for the bare proxy


def gateway_processes(spool_dir: Path, supervisor: int) -> tuple[int, int]:
    """A started `pd-gateway serve`'s worker w0 (the process that serves) and its supervisor,
    the latter moved to CPU 1 with every thread (the load generator's core, as a ClickHouse
    server's): what ships and owns the store is not the serving core's cost."""
    worker = int(json.loads((spool_dir / "w0" / "worker.json").read_text())["pid"])
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", "1", str(supervisor)], check=True, capture_output=True
        )
    return worker, supervisor


def single(
    tmp: Path,
    procs: list[subprocess.Popen[bytes]],
    durability: str,
    *,
    store: bool = True,
    bare: bool = False,
    ttl: int = 3600,
) -> Single:
    """The nginx upstream on CPU 1 and, on CPU 0, the gateway with gateway_config (without its
    store if not ``store``) or, if ``bare``, the bare aiohttp proxy; both appended to ``procs``."""
    tmp.chmod(0o755)  # nginx's workers run as an unprivileged user: let them read the body
    keys = Keys(*rsa_keypair(), public_pem="")
    (tmp / "jwks.json").write_text(json.dumps(keys.jwks()))
    token = keys.token("alice", ["hr_officer"], ttl=ttl)
    up_port, port, admin = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    (tmp / "body.json").write_bytes(b"x" * 1024)
    (tmp / "up.conf").write_text(NGINX_UPSTREAM.format(d=tmp, port=up_port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.append(subprocess.Popen(pinned("1", [nginx, "-c", str(tmp / "up.conf")])))
    key = tmp / "checkpoint.pem"
    generate_checkpoint_key(key, tmp / "checkpoint.pub")
    cfg = gateway_config(tmp, durability, upstream, port, admin, key)
    if not store:
        del cfg["store"]
    (tmp / "gw.json").write_text(json.dumps(cfg))
    if bare:
        cmd = ["bench/servers.py", "bare-proxy", "--port", str(port), "--upstream", upstream]
    else:
        cmd = ["-m", "gateway", "serve", "--config", str(tmp / "gw.json"), "--log-level", "WARNING"]
    procs.append(
        subprocess.Popen(pinned("0", [sys.executable, *cmd]), cwd=ROOT, stderr=subprocess.DEVNULL)
    )
    if bare:
        wait_http(f"http://127.0.0.1:{port}/")
        return Single(token, f"http://127.0.0.1:{port}/hr/employees/1001", 0, procs[-1].pid)
    wait_ready(f"http://127.0.0.1:{admin}/readyz")
    worker, supervisor = gateway_processes(tmp / f"spool-{durability}", procs[-1].pid)
    url = f"http://127.0.0.1:{port}/hr/employees/1001"
    return Single(token, url, admin, worker, supervisor)


def wait_ready(url: str, timeout: float = 60) -> None:
    """Until /readyz answers 200 (wait_http takes a 503 for "up"; the worker may still start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never ready")


def proxy_bench(tmp: Path) -> dict[str, float]:
    """Prints the side-by-side proxy table; returns the figures the targets are judged by."""
    keys = Keys(*rsa_keypair(), public_pem="")
    (tmp / "jwks.json").write_text(json.dumps(keys.jwks()))
    token = keys.token("alice", ["hr_officer"], ttl=3600)
    procs: list[subprocess.Popen[bytes]] = []
    py = sys.executable
    # The production shape of the store: Debian's clickhouse-server on loopback, on the load
    # generator's CPU (it is not the proxy's cost; its client side in the gateway is).
    clickhouse = ClickHouseServer(tmp / "clickhouse")
    try:
        clickhouse.start()
        if clickhouse.proc is not None and shutil.which("taskset"):
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "1", str(clickhouse.proc.pid)],
                check=True,
                capture_output=True,
            )

        def start(cpu: str, *args: str) -> None:
            # wrk closes its connections mid-response at the end of a run: the servers' resulting
            # "connection reset" tracebacks are noise here, so their stderr is dropped.
            procs.append(
                subprocess.Popen(pinned(cpu, [py, *args]), cwd=ROOT, stderr=subprocess.DEVNULL)
            )

        up_port, bare_port, nginx_port, h1_port = free_port(), free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        # The upstream: nginx serving 1 KiB, on the load generator's CPU.
        (tmp / "body.json").write_bytes(b"x" * 1024)
        tmp.chmod(0o755)  # nginx's workers run as an unprivileged user: let them read the body
        (tmp / "up.conf").write_text(NGINX_UPSTREAM.format(d=tmp, port=up_port))
        (tmp / "proxy.conf").write_text(NGINX_PROXY.format(d=tmp, port=nginx_port, up=up_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(subprocess.Popen(pinned("1", [nginx, "-c", str(tmp / "up.conf")])))
        pids: dict[str, int] = {}
        procs.append(subprocess.Popen(pinned("0", [nginx, "-c", str(tmp / "proxy.conf")])))
        pids["nginx proxy_pass (1 worker)"] = procs[-1].pid
        start(
            "0", "bench/servers.py", "bare-proxy", "--port", str(bare_port), "--upstream", upstream
        )
        pids["bare aiohttp proxy"] = procs[-1].pid
        start(
            "0",
            "bench/servers.py",
            "httptools-proxy",
            "--port",
            str(h1_port),
            "--upstream",
            upstream,
        )
        pids[H1] = procs[-1].pid
        checkpoint_key = tmp / "checkpoint.pem"  # signs the audit chain (decision 012)
        generate_checkpoint_key(checkpoint_key, tmp / "checkpoint.pub")
        targets: dict[str, str] = {}
        targets["upstream direct (nginx)"] = f"{upstream}/hr/employees/1001"
        targets["nginx proxy_pass (1 worker)"] = f"http://127.0.0.1:{nginx_port}/hr/employees/1001"
        targets[H1] = f"http://127.0.0.1:{h1_port}/hr/employees/1001"
        targets["bare aiohttp proxy"] = f"http://127.0.0.1:{bare_port}/hr/employees/1001"
        gateways = [(f"pd-gateway durability={d}", "", d) for d in ("batch", "fsync")]
        gateways += [
            (f"pd-gateway durability={d}, no store", "none-", d) for d in ("batch", "fsync")
        ]
        gateways += [(CH, "ch-", "fsync")]
        store_pids: dict[str, int] = {}
        for name, label, durability in gateways:
            port, admin = free_port(), free_port()
            cfg = gateway_config(
                tmp, durability, upstream, port, admin, checkpoint_key, label=label
            )
            if label == "none-":
                del cfg["store"]
            if label == "ch-":
                cfg["store"] = {
                    "kind": "clickhouse",
                    "hosts": [f"127.0.0.1:{clickhouse.tcp_port}"],
                    "database": "pd_audit_bench",
                }
            path = tmp / f"gw-{label}{durability}.json"  # JSON is YAML
            path.write_text(json.dumps(cfg))
            start("0", "-m", "gateway", "serve", "--config", str(path), "--log-level", "WARNING")
            wait_ready(f"http://127.0.0.1:{admin}/readyz")
            spool = tmp / f"spool-{label}{durability}"  # gateway_config's
            pids[name], store_pids[name] = gateway_processes(spool, procs[-1].pid)
            targets[name] = f"http://127.0.0.1:{port}/hr/employees/1001"
        wait_http(upstream + "/")
        wait_http(f"http://127.0.0.1:{bare_port}/")
        wait_http(f"http://127.0.0.1:{h1_port}/")
        for url in targets.values():  # warm up: connections, caches
            subprocess.run(
                pinned(
                    "1", ["wrk", "-t1", "-c8", "-d1s", "-H", f"Authorization: Bearer {token}", url]
                ),
                capture_output=True,
                check=True,
            )
        load = os.getloadavg()[0]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        single: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        store_cpu: dict[str, list[float]] = {name: [] for name in targets}
        rss: dict[str, float] = {}
        store_rss: dict[str, float] = {}
        for _ in range(ROUNDS):
            for name, url in targets.items():
                pid, sup = pids.get(name), store_pids.get(name)
                before = cpu_seconds(pid) if pid else 0.0
                sup_before = cpu_seconds(sup, children=False) if sup else 0.0
                r = wrk(url, token)
                if pid:  # measured under load, at the end of the run
                    cpu[name].append((cpu_seconds(pid) - before) / r["requests"] * 1e6)
                    rss[name] = max(rss.get(name, 0.0), rss_mib(pid))
                if sup:
                    used = cpu_seconds(sup, children=False) - sup_before
                    store_cpu[name].append(used / r["requests"] * 1e6)
                    store_rss[name] = max(store_rss.get(name, 0.0), rss_mib(sup, children=False))
                results[name].append(r)
                single[name].append(wrk(url, token, connections=1)["p50"])
        print(
            f"\n## Proxy: wrk -t1 -d{DURATION}s, 1 KiB responses from nginx; proxies pinned to "
            f"CPU 0, wrk and the upstream to CPU 1 (and pd-gateway's supervisor: the store, "
            f"shipping); median of {ROUNDS} interleaved rounds; load average before: "
            f"{load:.2f}"
        )
        w = max(len(name) for name in targets)
        print(
            f"{'target':<{w}} {'c=32 req/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'CPU µs/req':>10} {'c=1 p50 µs':>10} {'RSS MiB':>8} "
            f"{'store µs/req':>12} {'store MiB':>9}"
        )
        rps_of: dict[str, float] = {}
        p50_1: dict[str, float] = {}
        for name, runs in results.items():
            rps = rps_of[name] = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            one = p50_1[name] = statistics.median(single[name]) * 1000
            cpu_us = f"{statistics.median(cpu[name]):.0f}" if cpu[name] else "-"
            mem = f"{rss[name]:.0f}" if name in rss else "-"
            sup_us = f"{statistics.median(store_cpu[name]):.0f}" if store_cpu[name] else "-"
            sup_mem = f"{store_rss[name]:.0f}" if name in store_rss else "-"
            print(
                f"{name:<{w}} {rps:>10.0f} {p50:>7.2f} {p99:>7.2f} {cpu_us:>10} {one:>10.0f} "
                f"{mem:>8} {sup_us:>12} {sup_mem:>9}"
            )
        bare, ngx = rps_of["bare aiohttp proxy"], rps_of["nginx proxy_pass (1 worker)"]
        direct = p50_1["upstream direct (nginx)"]
        print("ratios (req/s at c=32; latency added at c=1 over the upstream directly):")
        for d in ("batch", "fsync"):
            name = f"pd-gateway durability={d}"
            print(
                f"  {name}: {rps_of[name] / bare:.0%} of the bare aiohttp proxy, "
                f"{rps_of[name] / ngx:.1%} of nginx; +{p50_1[name] - direct:.0f} µs p50 at c=1"
            )
        batch, fsync = rps_of["pd-gateway durability=batch"], rps_of["pd-gateway durability=fsync"]
        print(f"  fsync costs {1 - fsync / batch:.0%} of batch's throughput")
        for d in ("batch", "fsync"):
            with_store = rps_of[f"pd-gateway durability={d}"]
            without = rps_of[f"pd-gateway durability={d}, no store"]
            print(
                f"  the embedded store costs the serving process {1 - with_store / without:+.0%} "
                f"of its req/s ({d})"
            )
        print(
            f"  {CH}: {rps_of[CH] / bare:.0%} of the bare aiohttp proxy, "
            f"{rps_of[CH] / fsync:.2f}x the embedded store's; "
            f"+{p50_1[CH] - direct:.0f} µs p50 at c=1"
        )
        fsync_name = "pd-gateway durability=fsync"
        return {
            "fsync_of_bare": fsync / bare,
            "store_cost_batch": 1 - batch / rps_of["pd-gateway durability=batch, no store"],
            "store_cost_fsync": 1 - fsync / rps_of["pd-gateway durability=fsync, no store"],
            "c1_added_us": p50_1[fsync_name] - direct,
            "serving_rss_mib": rss[fsync_name],
            "fsync_of_nginx": fsync / ngx,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        clickhouse.stop()


def decision_bench(tmp: Path) -> None:
    from gateway.policy.engine import PolicyEngine

    def build(users: int, rules: int) -> tuple[PolicyEngine, list[tuple[str, tuple[str, ...]]]]:
        roles = max(1, rules // 10)
        lines = [
            f"p, role{i % roles}, sys{i // 60}, cat{i % 6}, act{(i // 6) % 10}"
            for i in range(rules)
        ]
        # Half the users come with IdP roles only; half are also named in a g rule.
        lines += [f"g, user{u}, role{u % roles}" for u in range(0, users, 2)]
        lines += [f"g2, role{r}, hr_records" for r in range(roles)]
        policy = tmp / f"p-{users}-{rules}.csv"
        policy.write_text("\n".join(lines) + "\n")
        engine = PolicyEngine.load(ROOT / "policies/model.conf", policy, cache_size=1_000_000)
        population = [(f"user{u}", (f"role{(u * 7) % roles}",)) for u in range(users)]
        return engine, population

    print(
        "\n## Authorisation: cost of one decision (uncached: a request no rule grants, full scan)"
    )
    print(f"{'policy':<28} {'pycasbin uncached':>18} {'PolicyEngine cached':>20}")
    for users, rules in ((10, 10), (10_000, 3_000)):
        engine, population = build(users, rules)
        enforcer = engine._enforcer
        sample = population[:: max(1, len(population) // 200)]
        t0 = time.perf_counter()
        for _, roles in sample:
            enforcer.enforce_ex(roles[0], "sysX", "cat0", "read", "hr_records")
        uncached = (time.perf_counter() - t0) / len(sample)
        for user, roles in population:  # warm the cache: one decision per user
            engine.decide(user, roles, "sys0", "cat0", "act0", "hr_records")
        n = 200_000
        t0 = time.perf_counter()
        for i in range(n):
            user, roles = population[i % len(population)]
            engine.decide(user, roles, "sys0", "cat0", "act0", "hr_records")
        cached = (time.perf_counter() - t0) / n
        print(
            f"{f'{users} users / {rules} rules':<28} "
            f"{uncached * 1e6:>15.0f} µs {cached * 1e6:>17.2f} µs"
        )


def token_bench(tmp: Path) -> None:
    from gateway.config.model import IdentityConfig
    from gateway.identity.tokens import KeySet, TokenVerifier, file_fetcher

    keys = Keys(*rsa_keypair(), public_pem="")
    (tmp / "jwks-t.json").write_text(json.dumps(keys.jwks()))
    cfg = IdentityConfig(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("RS256",),
        jwks_url=None,
        jwks_file=tmp / "jwks-t.json",
    )

    async def run() -> tuple[float, float]:
        ks = KeySet(file_fetcher(str(tmp / "jwks-t.json")), 30, 300, clock=time.monotonic)
        await ks.refresh()
        verifier = TokenVerifier(cfg, ks)
        tokens = [keys.token(f"u{i}", ["hr_officer"], kid=KID) for i in range(300)]
        t0 = time.perf_counter()
        for t in tokens:
            await verifier.verify(t)
        first = (time.perf_counter() - t0) / len(tokens)
        t0 = time.perf_counter()
        for _ in range(100):
            for t in tokens:
                await verifier.verify(t)
        cached = (time.perf_counter() - t0) / (100 * len(tokens))
        return first, cached

    first, cached = asyncio.run(run())
    print("\n## Token verification (RS256, 2048-bit)")
    print(f"first sight {first * 1e6:.0f} µs; cached repeat {cached * 1e6:.2f} µs")


def record_codec_bench() -> None:
    """What one audit record costs to encode (the spool, on the event loop) and to decode (the
    shipper's thread): the stdlib's json beside orjson, which the gateway uses, same bytes."""
    import timeit

    import orjson

    from gateway.audit import chain

    values = [
        "9f" * 16, 1_790_000_000_000_000, "a1" * 16, "alice", ["hr_officer"], "10.0.0.1",
        "bearer", "", "GET", "/hr/employees/1001", "", "hr-employees", "hr", "employee", "read",
        ["1001"], "allow", "rule", "p, hr_officer, hr, employee, read", "abcdef123456",
        0, 0, 0, 0, 0, "pending",
    ]  # fmt: skip
    rec = ["access", 2, "gw-1", 42, *values]
    std = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
    line = chain.line(orjson.dumps(rec), chain.link(chain.GENESIS, orjson.dumps(rec)))
    n = 50_000
    rows = [
        ("encode", lambda: std.encode(rec).encode(), lambda: orjson.dumps(rec)),
        ("decode", lambda: json.loads(line), lambda: orjson.loads(line)),
    ]
    print("\n## Audit record codec: µs per record (an access record, median of 5)")
    print(f"{'':8}{'stdlib json':>12}{'orjson':>10}")
    for name, a, b in rows:
        ta = statistics.median(timeit.repeat(a, number=n, repeat=5)) / n * 1e6
        tb = statistics.median(timeit.repeat(b, number=n, repeat=5)) / n * 1e6
        print(f"{name:8}{ta:12.2f}{tb:10.2f}")
    sha = statistics.median(
        timeit.repeat(lambda: chain.link(chain.GENESIS, line), number=n, repeat=5)
    )
    print(f"chain link (sha256 of one record): {sha / n * 1e6:.2f} µs")


def targets(proxy: dict[str, float], workers: float | None, pipeline_us: float) -> None:
    """The performance targets (docs/benchmarks.md), judged from this run's figures."""
    rows = [
        (
            "the pipeline over its data path (the part table: gateway - bare)",
            "<= 60 µs",
            f"{pipeline_us:.0f} µs",
        ),
        (
            "gateway, embedded store, fsync, req/s of the bare aiohttp proxy's",
            ">= 80 %",
            f"{proxy['fsync_of_bare']:.0%}",
        ),
        (
            "the embedded store's cost against no store (batch / fsync)",
            "<= 5 %",
            f"{proxy['store_cost_batch']:+.0%} / {proxy['store_cost_fsync']:+.0%}",
        ),
        (
            "c=1 p50 added over the upstream directly, fsync",
            "<= 500 µs",
            f"+{proxy['c1_added_us']:.0f} µs",
        ),
        (
            "serving process RSS under load (fsync, embedded store)",
            "<= 120 MiB",
            f"{proxy['serving_rss_mib']:.0f} MiB (flat over 30 min: make soak)",
        ),
        (
            "workers 1 -> 2, req/s",
            ">= 1.8x",
            f"{workers:.2f}x (2 cores shared with wrk and nginx)" if workers else "not run",
        ),
        (
            "long range: req/s of nginx proxy_pass, per core",
            ">= 50 %",
            f"{proxy['fsync_of_nginx']:.1%}",
        ),
    ]
    print("\n## Targets (this run)")
    w = max(len(r[0]) for r in rows)
    print(f"{'target':<{w}} {'goal':>10}  measured")
    for name, goal, value in rows:
        print(f"{name:<{w}} {goal:>10}  {value}")


def main() -> None:
    print(
        f"# pd-gateway bench — {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    only_proxy = sys.argv[1:] == ["proxy"]  # `bench/run.py proxy`: the side-by-side table alone
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: make system-deps")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if only_proxy:
            proxy_bench(tmp)
            return
        decision_bench(tmp)
        token_bench(tmp)
        record_codec_bench()
        proxy = proxy_bench(tmp)
    import instructions  # bench/ is on sys.path when run as a script
    import parts
    import store_bench
    import workers_bench

    part = parts.table()
    parts.allocs(None)
    parts.allocs([])
    parts.allocs(list(parts.PARTS))
    instructions.report(parts=True, connections=32)  # as the CPU tables: wrk -c32
    scaling = workers_bench.main()
    store_bench.main()
    targets(proxy, scaling, part["gateway, every part"] - part["bare aiohttp proxy"])


if __name__ == "__main__":
    main()
