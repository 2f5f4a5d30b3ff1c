"""`make bench`'s part table: what each part of the pipeline costs per request, measured by
switching it off, one at a time, side by side in one run (docs/benchmarks.md).

    python bench/parts.py               # the table (BENCH_SECONDS, BENCH_ROUNDS as make bench)
    python bench/parts.py table --against DIR --only-full  # this tree beside another checkout
    python bench/parts.py calls         # Python function calls per request on the event loop
    python bench/parts.py calls --without all   # ... with every part stubbed: aiohttp's share
    python bench/parts.py calls --keep FILE     # ... and the cProfile stats kept in FILE
    python bench/parts.py allocs        # memory allocations per request (memray), by package
    python bench/parts.py allocs --without all  # ... with every part stubbed
    python bench/parts.py allocs --bare  # ... of the bare aiohttp proxy

The gateway runs in a process of its own with no store (the pipeline and its spool; shipping is
the store process's), built with the composition root and served on its real listeners, with the
named parts replaced by stubs. Every variant serves the same request (a bearer token, a route with
a subject in the path, an allowed decision, the access and outcome records, a 1 KiB answer from
nginx), pinned to CPU 0 while wrk and nginx run on CPU 1; the figure is the server's CPU time per
request (/proc), the median of interleaved rounds. The bare aiohttp proxy is measured beside them:
gateway minus bare is the pipeline's cost over its data path.

A stub answers as the part would for this request (an allowed decision, a valid principal); none
of them is a configuration the product offers. `calls` counts every Python call on the event
loop while 2,000 requests are served (cProfile), divided by the requests: exact and repeatable
where CPU time is noisy. `allocs` counts every memory allocation of the process (memray, with
Python's own allocator traced: each object, each buffer) over 2,000 requests after 500 of
warm-up, by the package of the Python function that asked for it. tracemalloc cannot give this
figure: it keeps the blocks still alive, not those made and freed within a request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import json
import logging
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gateway

from run import (  # bench/ is a script directory
    NGINX_UPSTREAM,
    ROOT,
    cpu_seconds,
    gateway_config,
    pinned,
    processes,
    wait_http,
    wrk,
)

from gateway.audit.checkpoint import generate as generate_checkpoint_key
from gateway.testing.chserver import free_port
from tests.conftest import Keys, rsa_keypair

DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CALLS_REQUESTS = 2000
ALLOCS_WARM_UP = 500  # requests before counting: caches filled, connections pooled


class _Noop:
    def inc(self, *_: Any) -> None:
        pass

    def observe(self, *_: Any) -> None:
        pass

    def set(self, *_: Any) -> None:
        pass


def _replace_everywhere(original: Any, replacement: Any) -> None:
    """Every gateway module's global bound to ``original`` now names ``replacement``."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("gateway"):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, replacement)


def _stub_metrics() -> None:
    from gateway.core.metrics import Metrics

    noop = _Noop()
    Metrics.child = lambda self, metric, *labels: noop  # type: ignore[assignment,method-assign]
    Metrics.audit_record = lambda self, kind: None  # type: ignore[method-assign]


def _stub_ids() -> None:
    import itertools

    from gateway.core import ids

    counter = itertools.count()
    _replace_everywhere(ids.new_id, lambda: f"{next(counter):032x}")


def _stub_chain() -> None:
    from gateway.audit import chain

    chain.link = lambda previous, canonical_form: previous  # type: ignore[assignment]


def _stub_header_checks() -> None:
    from gateway.forwarding import headers

    _replace_everywhere(headers.check_request_headers, lambda *a, **k: None)


def _stub_identity() -> None:
    from gateway.identity.tokens import Principal, TokenVerifier

    principal = Principal("alice", ("hr_officer",), expires_at=2.0**40, issued_at=time.time())

    async def verify(self: Any, token: str) -> Principal:
        return principal

    TokenVerifier.verify = verify  # type: ignore[method-assign]


def _stub_authz() -> None:
    from gateway.policy.engine import Decision, PolicyEngine

    def decide(self: Any, *args: Any) -> Decision:
        return Decision(True, "p, hr_officer, hr, employee, read", self.version)

    PolicyEngine.decide = decide  # type: ignore[method-assign]


def _stub_blocks() -> None:
    from gateway.governance.blocks import SubjectBlocks

    SubjectBlocks.blocked = lambda self, subjects: None  # type: ignore[method-assign]


def _stub_audit() -> None:
    from gateway.audit.recorder import Pending, Recorder

    class Done(Pending):
        async def finish(self, *args: Any, **values: Any) -> Any:  # type: ignore[override]
            return None

    async def begin(self: Any, event: Any) -> Pending:
        return Done(self.spool, event)

    Recorder.begin = begin  # type: ignore[method-assign]


def _stub_logging() -> None:
    logging.disable(logging.CRITICAL)


# Name → what switching it off does. `gc` is applied by the server itself (no settle_heap).
PARTS: dict[str, Callable[[], None]] = {
    "metrics": _stub_metrics,
    "ids": _stub_ids,
    "chain": _stub_chain,
    "header-checks": _stub_header_checks,
    "identity": _stub_identity,
    "authz": _stub_authz,
    "blocks": _stub_blocks,
    "audit": _stub_audit,
    "logging": _stub_logging,
    "gc": lambda: None,
}


# What no part switch removes, taken apart (`bench/instructions.py --floor`): each is what the
# gateway does on its data path beyond a bare proxy, replaced by the bare proxy's doing or by
# nothing. Applied on top of every part above stubbed; none is a configuration the product offers.
def _floor_injected_headers() -> None:
    from gateway.web.pipeline import Pipeline

    Pipeline._injected = staticmethod(lambda ctx: {})  # type: ignore[method-assign]


def _floor_request_headers() -> None:
    from servers import bare_request_headers  # bench/ is on sys.path when run as a script

    from gateway.forwarding.forwarder import Forwarder

    def bare(self: Any, request: Any, *_: Any) -> dict[str, str]:
        return bare_request_headers(request)

    Forwarder.request_headers = bare  # type: ignore[assignment,method-assign]


def _floor_response_headers() -> None:
    from multidict import CIMultiDict
    from servers import bare_response_headers  # bench/ is on sys.path when run as a script

    from gateway.forwarding.forwarder import Forwarder

    def bare(self: Any, request: Any, route: Any, upstream: Any, request_id: str) -> Any:
        return CIMultiDict(bare_response_headers(upstream))

    Forwarder.response_head = bare  # type: ignore[method-assign]


def _floor_records() -> None:
    """The access record built once and reused, the outcome's values not worked out."""
    from gateway.web.pipeline import Pipeline

    made: list[Any] = []
    build = Pipeline._event

    def event(self: Any, ctx: Any, decision: str, reason: str) -> Any:
        if not made:
            made.append(build(self, ctx, decision, reason))
        return made[0]

    Pipeline._event = event  # type: ignore[method-assign]
    Pipeline._finish = lambda self, ctx, exchange, pending, *a: pending.finish(200, 0)  # type: ignore[method-assign]


def _floor_subjects() -> None:
    from gateway.web import pipeline

    pipeline.subject_ids = lambda route, path, query: []  # type: ignore[assignment]


def _floor_front() -> None:
    """The request's first checks: its canonical path, upgrade, client address."""
    from gateway.web import pipeline

    pipeline.canonical_path = lambda raw: raw.partition("?")[0]  # type: ignore[assignment]
    pipeline.upgrade_kind = lambda headers: None  # type: ignore[assignment]
    pipeline.client_address = lambda request, trusted: "127.0.0.1"  # type: ignore[assignment]


FLOOR: dict[str, Callable[[], None]] = {
    "injected-headers": _floor_injected_headers,
    "request-headers": _floor_request_headers,
    "response-headers": _floor_response_headers,
    "records": _floor_records,
    "subjects": _floor_subjects,
    "front": _floor_front,
}


def serve(
    config: Path, without: list[str], calls_out: Path | None, allocs_out: Path | None = None
) -> None:
    """The gateway without the parts named, until SIGTERM (bench-only: see the docstring)."""
    import uvloop

    from gateway.config.load import load_config
    from gateway.runtime.app import GATEWAY, build
    from gateway.runtime.heap import settle_heap
    from gateway.web import listeners

    for part in without:
        (PARTS | FLOOR)[part]()

    async def main() -> None:
        cfg = load_config(config)
        proxy_app, admin_app = build(cfg, ship=False)
        gw = proxy_app[GATEWAY]
        sites = await listeners.start(cfg, proxy_app, admin_app, gw.metrics)
        if "gc" not in without:
            settle_heap()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        window = None
        if calls_out is not None:
            window = calls_window(calls_out)
        elif allocs_out is not None:
            window = allocation_window(allocs_out)
        if window is not None:
            pipeline = gw.serving.pipeline  # type: ignore[union-attr]
            counted = functools.partial(window.around, pipeline.handle)
            pipeline.handle = counted  # type: ignore[method-assign]
        await stop.wait()
        await sites.close()

    uvloop.run(main())


class RequestWindow:
    """Counts the requests passed through ``around`` and calls ``start`` before request
    ``first`` and ``stop`` after request ``last`` (c=1: one at a time, so the window holds those
    requests and the loop's work between them)."""

    def __init__(
        self, first: int, last: int, start: Callable[[], object], stop: Callable[[], object]
    ) -> None:
        self._first, self._last, self._start, self._stop = first, last, start, stop
        self._handled = 0

    async def around(self, handler: Callable[[Any], Any], request: Any) -> Any:
        self._handled += 1
        if self._handled == self._first:
            self._start()
        try:
            return await handler(request)
        finally:
            if self._handled == self._last:
                self._stop()


def calls_window(out: Path) -> RequestWindow:
    """cProfile over the first CALLS_REQUESTS requests; the stats written to ``out`` then."""
    profile = cProfile.Profile()

    def stop() -> None:
        profile.disable()
        profile.dump_stats(str(out))

    return RequestWindow(1, CALLS_REQUESTS, profile.enable, stop)


def allocation_window(out: Path) -> RequestWindow:
    """memray over requests ALLOCS_WARM_UP+1 … ALLOCS_WARM_UP+CALLS_REQUESTS; ``OUT.done`` is
    made when it closes."""
    import memray

    tracker = memray.Tracker(out, trace_python_allocators=True)

    def stop() -> None:
        tracker.__exit__(None, None, None)
        (out.parent / (out.name + ".done")).touch()

    return RequestWindow(
        ALLOCS_WARM_UP + 1, ALLOCS_WARM_UP + CALLS_REQUESTS, tracker.__enter__, stop
    )


def _prepare(tmp: Path) -> tuple[str, Path, int]:
    """What every variant serves with, in ``tmp``: the JWKS and a token for it, a checkpoint key,
    and nginx's config for a 1 KiB answer on a free port. The token, the key, nginx's port."""
    keys = Keys(*rsa_keypair(), public_pem="")
    (tmp / "jwks.json").write_text(json.dumps(keys.jwks()))
    token = keys.token("alice", ["hr_officer"], ttl=3600)
    key = tmp / "checkpoint.pem"
    generate_checkpoint_key(key, tmp / "checkpoint.pub")
    tmp.chmod(0o755)
    (tmp / "body.json").write_bytes(b"x" * 1024)
    up_port = free_port()
    (tmp / "up.conf").write_text(NGINX_UPSTREAM.format(d=tmp, port=up_port))
    return token, key, up_port


def server_command(
    tmp: Path, upstream: str, key: Path, without: list[str] | None, label: str = ""
) -> tuple[list[str], int, str]:
    """The command serving the bare aiohttp proxy (``without`` None) or the gateway without the
    parts named, no store (its config written to ``tmp``); its proxy port, and the URL that
    answers once it is ready."""
    port = free_port()
    if without is None:
        cmd = [sys.executable, "bench/servers.py", "bare-proxy", "--port", str(port)]
        return [*cmd, "--upstream", upstream], port, f"http://127.0.0.1:{port}/"
    admin = free_port()
    cfg = gateway_config(tmp, "batch", upstream, port, admin, key, label=label)
    del cfg["store"]
    path = tmp / f"gateway-{label}.json"
    path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "bench/parts.py", "serve", "--config", str(path)]
    if without:
        cmd += ["--without", ",".join(without)]
    return cmd, port, f"http://127.0.0.1:{admin}/readyz"


@contextlib.contextmanager
def _servers(
    tmp: Path, variants: dict[str, list[str]]
) -> Iterator[tuple[str, dict[str, int], dict[str, int]]]:
    """nginx on CPU 1; the bare proxy and one gateway per variant on CPU 0. Yields the token,
    each target's port and its pid (the bare aiohttp proxy first, then the variants)."""
    token, key, up_port = _prepare(tmp)
    upstream = f"http://127.0.0.1:{up_port}"
    with processes() as procs:
        procs.append(subprocess.Popen(pinned("1", ["nginx", "-c", str(tmp / "up.conf")])))
        pids: dict[str, int] = {}
        ports: dict[str, int] = {}
        cmd, bare, bare_ready = server_command(tmp, upstream, key, None)
        procs.append(subprocess.Popen(pinned("0", cmd), cwd=ROOT, stderr=subprocess.DEVNULL))
        pids["bare aiohttp proxy"], ports["bare aiohttp proxy"] = procs[-1].pid, bare
        for name, without in variants.items():
            cmd, port, ready = server_command(tmp, upstream, key, without, label=f"{len(pids)}-")
            tree = Path(name.split(" at ", 1)[1]) if " at " in name else ROOT  # table --against
            procs.append(subprocess.Popen(pinned("0", cmd), cwd=tree, stderr=subprocess.DEVNULL))
            pids[name], ports[name] = procs[-1].pid, port
            wait_http(ready)
        wait_http(bare_ready)
        yield token, ports, pids


def table(against: Path | None = None, only_full: bool = False) -> dict[str, float]:
    """Prints the part table; returns each row's median CPU µs per request. ``against``: the
    gateway of another checkout (a `git worktree` of an earlier commit) measured beside this one,
    in the same rounds; ``only_full``: no part switched off (this tree, the other, the bare)."""
    variants: dict[str, list[str]] = {"gateway, every part": []}
    if against is not None:
        variants[f"gateway, every part, at {against.resolve()}"] = []
    if not only_full:
        variants.update({f"without {p}": [p] for p in PARTS})
        variants["without all of them"] = list(PARTS)
    with (
        tempfile.TemporaryDirectory(prefix="pdgw-parts-") as d,
        _servers(Path(d), variants) as (token, ports, pids),
    ):
        urls = {n: f"http://127.0.0.1:{p}/hr/employees/1001" for n, p in ports.items()}
        for url in urls.values():  # warm up
            wrk(url, token, seconds=1)
        cpu: dict[str, list[float]] = {n: [] for n in urls}
        rps: dict[str, list[float]] = {n: [] for n in urls}
        for _ in range(ROUNDS):
            for name, url in urls.items():
                before = cpu_seconds(pids[name])
                r = wrk(url, token)
                cpu[name].append((cpu_seconds(pids[name]) - before) / r["requests"] * 1e6)
                rps[name].append(r["rps"])
    med = {n: statistics.median(v) for n, v in cpu.items()}
    bare, full = med["bare aiohttp proxy"], med["gateway, every part"]
    print(
        f"\n## The pipeline's parts: CPU µs per request of the serving process, wrk -t1 -c32 "
        f"-d{DURATION}s, median of {ROUNDS} interleaved rounds (no store: the pipeline and its "
        "spool, durability batch)"
    )
    w = max(len(n) for n in med)
    print(f"{'variant':<{w}} {'CPU µs/req':>10} {'saves':>7} {'req/s':>8}")
    for name, value in med.items():
        saves = "" if name == "bare aiohttp proxy" else f"{full - value:>7.0f}"
        print(f"{name:<{w}} {value:>10.0f} {saves:>7} {statistics.median(rps[name]):>8.0f}")
    if only_full:
        print(f"the pipeline over its data path (gateway − bare): {full - bare:.0f} µs")
        return med
    print(
        f"the pipeline over its data path (gateway − bare): {full - bare:.0f} µs; with every "
        f"part stubbed: {med['without all of them'] - bare:.0f} µs (what no switch removes: "
        "the pipeline's own steps, routing, the forwarder's header copies and the aiohttp "
        "client's handling of them; `parts.py calls --without all` shows where)"
    )
    return med


def _drive_one(tmp: Path, without: list[str] | None, flag: str, out: Path, done: Path) -> None:
    """nginx and one gateway serving with ``flag OUT`` (--calls, --allocs), driven by wrk at c=1
    until ``done`` exists; the gateway is stopped before returning. ``without`` None: the bare
    aiohttp proxy instead (--allocs only)."""
    token, key, up_port = _prepare(tmp)
    cmd, port, ready = server_command(tmp, f"http://127.0.0.1:{up_port}", key, without)
    with processes() as procs:
        procs.append(subprocess.Popen(["nginx", "-c", str(tmp / "up.conf")]))
        procs.append(subprocess.Popen([*cmd, flag, str(out)], cwd=ROOT, stderr=subprocess.DEVNULL))
        wait_http(ready)
        url = f"http://127.0.0.1:{port}/hr/employees/1001"
        deadline = time.monotonic() + 300
        while not done.exists() and time.monotonic() < deadline:
            wrk(url, token, connections=1, seconds=2)
        procs[-1].send_signal(signal.SIGTERM)
    if not done.exists():
        raise RuntimeError(f"the gateway never finished counting ({flag})")


def calls(without: list[str], keep: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="pdgw-calls-") as d:
        tmp = Path(d)
        stats = tmp / "calls.prof"
        _drive_one(tmp, without, "--calls", stats, stats)
        if keep is not None:  # for pstats, snakeviz or a diff against another profile
            keep.write_bytes(stats.read_bytes())
        s = pstats.Stats(str(stats))
        total = sum(v[1] for v in s.stats.values())  # type: ignore[attr-defined]
        print(
            f"\n## Python calls per request on the event loop (cProfile over {CALLS_REQUESTS} "
            f"requests, c=1, no store{', without ' + ', '.join(without) if without else ''}): "
            f"{total / CALLS_REQUESTS:.0f}"
        )
        stats_items = s.stats.items()  # type: ignore[attr-defined]
        own: dict[str, list[float]] = {}  # by package: calls, own time (cProfile's tottime)
        for (file, _line, _func), (_, ncalls, tottime, *_rest) in stats_items:
            group = own.setdefault(_package(file), [0.0, 0.0])
            group[0] += ncalls
            group[1] += tottime
        all_time = sum(t for _, t in own.values()) or 1.0
        print("  by package: calls per request, share of the loop's own time (cProfile's)")
        for name, (n, t) in sorted(own.items(), key=lambda kv: -kv[1][1]):
            print(f"  {n / CALLS_REQUESTS:>7.1f}  {t / all_time:>4.0%}  {name}")
        print("  the most called:")
        rows = sorted(stats_items, key=lambda kv: -kv[1][1])[:25]
        for (file, line, func), (_, ncalls, *_rest) in rows:
            where = "/".join(Path(file).parts[-2:]) if file != "~" else "builtin"
            print(f"  {ncalls / CALLS_REQUESTS:>7.1f}  {func} ({where}:{line})")


def allocs(without: list[str] | None) -> None:
    """Prints the allocations per request of the gateway without the parts named, or of the bare
    aiohttp proxy (``without`` None)."""
    import memray

    frees = {memray.AllocatorType.FREE, memray.AllocatorType.PYMALLOC_FREE}
    frees.add(memray.AllocatorType.MUNMAP)
    with tempfile.TemporaryDirectory(prefix="pdgw-allocs-") as d:
        tmp = Path(d)
        out = tmp / "allocs.bin"
        _drive_one(tmp, without, "--allocs", out, tmp / "allocs.bin.done")
        by: dict[str, list[int]] = {}  # package → allocations, bytes
        where: dict[str, int] = {}  # function → allocations
        with memray.FileReader(out) as reader:
            for rec in reader.get_allocation_records():
                if rec.allocator in frees:
                    continue
                frames = rec.stack_trace(max_stacks=1)
                package = _package(frames[0][1]) if frames else "(no Python frame)"
                group = by.setdefault(package, [0, 0])
                group[0] += rec.n_allocations
                group[1] += rec.size
                if frames:
                    func, file, _line = frames[0]
                    name = f"{func} ({'/'.join(Path(file).parts[-2:])})"
                    where[name] = where.get(name, 0) + rec.n_allocations
    total = sum(n for n, _ in by.values())
    size = sum(b for _, b in by.values())
    what = (
        "the bare aiohttp proxy"
        if without is None
        else "the gateway, no store"
        + (", without " + ", ".join(without) if without else ", every part")
    )
    n = CALLS_REQUESTS
    print(
        f"\n## Memory allocations per request of {what} (memray, Python's allocator traced; "
        f"{n} requests after {ALLOCS_WARM_UP} of warm-up, c=1): {total / n:.0f} "
        f"({size / n / 1024:.1f} KiB)"
    )
    print("  by package of the Python function that asked: allocations, KiB per request")
    for name, (count, nbytes) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        if count / n >= 0.5:
            print(f"  {count / n:>7.1f}  {nbytes / n / 1024:>6.1f}  {name}")
    print("  the functions that allocate most (allocations per request):")
    for name, count in sorted(where.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {count / n:>7.1f}  {name}")


def _package(file: str) -> str:
    """Where a profiled function lives: a sub-package of the gateway, a library, or Python."""
    parts = Path(file).parts
    if file == "~":
        return "builtins (C)"
    if "gateway" in parts and "site-packages" not in parts:
        i = len(parts) - 1 - parts[::-1].index("gateway")
        return "gateway." + parts[i + 1] if i + 2 < len(parts) else "gateway"
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    if len(parts) < 2:
        return "python: " + file
    if parts[-2].startswith("python3"):  # a standard module of its own: asyncio is a directory
        return "python: " + parts[-1].removesuffix(".py")
    return "python: " + parts[-2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "what", nargs="?", default="table", choices=["table", "calls", "allocs", "serve"]
    )
    p.add_argument("--config", type=Path)
    p.add_argument("--without", default="")
    p.add_argument("--calls", type=Path)
    p.add_argument("--allocs", type=Path)
    p.add_argument("--bare", action="store_true", help="allocs: the bare aiohttp proxy")
    p.add_argument("--against", type=Path, help="table: another checkout's gateway beside this")
    p.add_argument("--only-full", action="store_true", help="table: no part switched off")
    p.add_argument("--keep", type=Path, help="calls: keep the cProfile stats in this file")
    args = p.parse_args()
    without = [w for w in args.without.split(",") if w]
    if without == ["all"]:
        without = list(PARTS)
    if args.what == "serve":
        serve(args.config, without, args.calls, args.allocs)
    elif args.what == "allocs":
        allocs(None if args.bare else without)
    elif args.what == "calls":
        calls(without, args.keep)
    else:
        table(args.against, args.only_full)


if __name__ == "__main__":
    main()
