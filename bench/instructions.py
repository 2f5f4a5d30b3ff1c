"""Instructions per request, counted by valgrind (callgrind): a side-by-side comparison that does
not depend on how busy the machine is (docs/benchmarks.md).

    python bench/instructions.py                # the bare proxy, the gateway, every part stubbed
    python bench/instructions.py --against DIR  # ... and another checkout's gateway beside it
    python bench/instructions.py --parts        # ... and each part of bench/parts.py switched off
    python bench/instructions.py --floor        # ... and, every part stubbed, what remains taken
                                                #     apart (bench/parts.py FLOOR)
    python bench/instructions.py -c 32 ...      # 32 requests in flight, as the CPU tables' wrk

CPU time per request on these VMs moves by 10-20 % from one hour to the next, and by several per
cent between two rounds of one run; a change worth 5 µs cannot be seen in it. The number of
machine instructions a process executes for a request does not move with the machine's load:
callgrind counts them exactly (two windows of one run agree to ~0.1 %).

Each server runs under `valgrind --tool=callgrind` (no store, as `bench/parts.py`; nginx's 1 KiB
answer upstream); a driver here sends WARM_UP requests one at a time on one keep-alive
connection, zeroes the counters (`callgrind_control -z`), sends REQUESTS more, dumps them
(`callgrind_control -d`), twice. The figure is the event-loop thread's instructions in a window,
divided by REQUESTS: the request path, and whatever else the loop did meanwhile (its timers: a few
per second, so ~1 % more when many servers run at once and each window takes longer: compare the
rows of one run). The spool's sync thread is left out (its work depends on wall time, not requests:
`durability: batch` fsyncs every batch_interval_ms). The servers run at the same time, which
changes the counts only through those timers.

One at a time (the default) every request pays alone for what the event loop does once per
iteration for all the requests ready in it: the spool's group commit (one write for every record
of an iteration), the loop's own polling. With `-c 32` those are shared as under wrk -c32: the
audit part costs ~100,000 instructions per request there against ~150,000 at c=1 (2026-12-05);
a change to them is judged at c=32, where the targets are measured. Each of the 32 connections
sends its share one request at a time, so the count stays exact.

What it does not count: time in the kernel (system calls are counted as the instructions that
make them), cache misses and the cost of one instruction against another. SHA-256 counts far
more than it costs: valgrind's CPU has no SHA instructions, so the chain's two hashes count
~28,000 instructions (~5.6 µs at the ratio below) for ~2 µs of real time (timeit); check a
change to such C code with timeit before trusting its count. On this VM 1,000
instructions of this workload take about 0.2 µs of CPU (the bare proxy: ~470 k instructions,
~90 µs of user time per request at c=32); read it as a ratio, as the other tables.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gateway

from parts import FLOOR, PARTS, _prepare, server_command  # bench/ is a script directory
from run import ROOT, processes, wait_http

WARM_UP = 300  # requests before counting: caches filled, the upstream connection pooled
REQUESTS = int(os.environ.get("INSTRUCTIONS_REQUESTS", "1000"))
WINDOWS = 2
PATH = "/hr/employees/1001"


def _drive(port: int, token: str, n: int) -> None:
    """``n`` GETs, one at a time, on one keep-alive connection; each must be answered 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(n):
            conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"port {port}: {resp.status} for {PATH}")
    finally:
        conn.close()


def _drive_concurrently(port: int, token: str, n: int, connections: int) -> None:
    """``n`` GETs over ``connections`` keep-alive connections at once (each sends its share one
    at a time): the server sees ``connections`` requests in flight, as under wrk -c32, and the
    count stays exact (every request is answered inside the window)."""
    shares = [n // connections + (i < n % connections) for i in range(connections)]
    with ThreadPoolExecutor(connections) as pool:
        for done in [pool.submit(_drive, port, token, k) for k in shares if k]:
            done.result()


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def _main_thread_total(out: Path, pid: int, window: int) -> int:
    """The instructions of the dump ``window`` of the process's first thread (the event loop)."""
    dump = out.parent / f"{out.name}.{pid}.out.{window}-01"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dump.exists():
            for line in dump.read_text().splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no summary to {dump}")


def _count(pid: int, port: int, token: str, out: Path, connections: int) -> list[float]:
    _drive_concurrently(port, token, WARM_UP, connections)
    per_request = []
    for window in range(1, WINDOWS + 1):
        _control("-z", pid)
        _drive_concurrently(port, token, REQUESTS, connections)
        _control("-d", pid)
        per_request.append(_main_thread_total(out, pid, window) / REQUESTS)
    return per_request


def measure(
    against: Path | None, parts: bool = False, floor: bool = False, connections: int = 1
) -> dict[str, list[float]]:
    """Each variant's instructions per request in each window. ``parts``: one variant per part
    of bench/parts.py switched off, as its CPU table does; ``floor``: every part stubbed and one
    piece of what remains (``FLOOR``) taken out, then all of them."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (WITH_BENCH=1 ./scripts/system-deps.sh)")
    # name → the checkout it runs from, the parts switched off (None: the bare aiohttp proxy)
    variants: dict[str, tuple[Path, list[str] | None]] = {"bare aiohttp proxy": (ROOT, None)}
    variants["gateway, every part"] = (ROOT, [])
    if against is not None:
        variants[f"gateway at {against}"] = (against.resolve(), [])
    if parts:
        variants.update({f"without {p}": (ROOT, [p]) for p in PARTS})
    variants["gateway, every part stubbed"] = (ROOT, list(PARTS))
    if floor:
        variants.update({f"stubbed, without {f}": (ROOT, [*PARTS, f]) for f in FLOOR})
        variants["stubbed, without all of those"] = (ROOT, [*PARTS, *FLOOR])
    with tempfile.TemporaryDirectory(prefix="pdgw-instr-") as d, processes() as procs:
        tmp = Path(d)
        token, key, up_port = _prepare(tmp)
        upstream = f"http://127.0.0.1:{up_port}"
        procs.append(subprocess.Popen(["nginx", "-c", str(tmp / "up.conf")]))
        started: dict[str, tuple[int, int, Path]] = {}  # name → pid, port, callgrind out prefix
        readiness: list[str] = []
        for i, (name, (tree, without)) in enumerate(variants.items()):
            out = tmp / f"v{i}"
            valgrind = ["valgrind", "--tool=callgrind", "--separate-threads=yes"]
            valgrind.append(f"--callgrind-out-file={out}.%p.out")
            cmd, port, ready = server_command(tmp, upstream, key, without, label=f"{i}-")
            procs.append(subprocess.Popen([*valgrind, *cmd], cwd=tree, stderr=subprocess.DEVNULL))
            started[name] = (procs[-1].pid, port, out)
            readiness.append(ready)
        for ready in readiness:
            wait_http(ready, timeout=300)  # Python under valgrind starts ~30× slower
        return {
            name: _count(pid, port, token, out, connections)
            for name, (pid, port, out) in started.items()
        }


def report(
    against: Path | None = None, parts: bool = False, floor: bool = False, connections: int = 1
) -> None:
    """Prints the table (`make bench` prints it with ``parts``, at c=32)."""
    counts = measure(against, parts, floor, connections)
    print(
        f"\n## Instructions per request (callgrind, the event-loop thread; c={connections}, "
        f"{REQUESTS} requests per window after {WARM_UP} of warm-up, no store, durability batch)"
    )
    w = max(len(n) for n in counts)
    print(f"{'variant':<{w}} {'window 1':>10} {'window 2':>10} {'over bare':>10} {'saves':>8}")
    bare = min(counts["bare aiohttp proxy"])
    full = min(counts["gateway, every part"])
    stubbed = min(counts["gateway, every part stubbed"])
    for name, windows in counts.items():
        over = "" if name == "bare aiohttp proxy" else f"{min(windows) - bare:>10,.0f}"
        saves = ""
        if name.startswith(("without", "gateway, every part stubbed")):
            saves = f"{full - min(windows):>8,.0f}"
        elif name.startswith("stubbed, without"):  # against the stubbed row
            saves = f"{stubbed - min(windows):>8,.0f}"
        print(f"{name:<{w}} {windows[0]:>10,.0f} {windows[1]:>10,.0f} {over:>10} {saves}")
    print(
        f"the pipeline over its data path: {full - bare:,.0f} instructions per request, "
        f"{(full - bare) / bare:.2f}x the bare aiohttp proxy's own"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--against", type=Path, help="another checkout's gateway beside this one")
    p.add_argument("--parts", action="store_true", help="and each part switched off")
    p.add_argument("--floor", action="store_true", help="and what no part switch removes")
    p.add_argument(
        "-c",
        "--connections",
        type=int,
        default=1,
        help="requests in flight at once (1: one at a time; 32: as the CPU tables' wrk -c32)",
    )
    args = p.parse_args()
    report(args.against, args.parts, args.floor, args.connections)


if __name__ == "__main__":
    main()
