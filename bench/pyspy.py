"""`make profile`: where the gateway's CPU goes under load, sampled with py-spy
(docs/benchmarks.md).

The gateway runs the same pipeline as `make bench` (bench/run.py's gateway_config): its worker,
the process that serves (decision 030), pinned to CPU 0; its supervisor (the store, shipping),
wrk -c32 and the nginx upstream run on CPU 1. py-spy samples every thread of the worker for
PROFILE_SECONDS (default 15) at 250 Hz, without idle frames, and this prints, per thread, its share
of the samples and the functions with the most samples at the top of the stack (self time), then
the functions with the most samples anywhere on the stack (inclusive time). The raw samples
(flamegraph input) are left in var/profile-<durability>.txt.

    PROFILE_DURABILITY=fsync make profile
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # bench/ is a script directory
    ROOT,
    pinned,
    processes,
    single,
)

SECONDS = int(os.environ.get("PROFILE_SECONDS", "15"))
DURABILITY = os.environ.get("PROFILE_DURABILITY", "batch")
# `gateway` (the whole pipeline) or `bare` (bench/servers.py's bare aiohttp proxy, the baseline)
TARGET = os.environ.get("PROFILE_TARGET", "gateway")
RATE = 250
# PROFILE_GIL=1: sample only the thread holding the GIL (py-spy --gil). A thread made to wait for
# the GIL otherwise shows as working on whatever line it was stopped at.
GIL = os.environ.get("PROFILE_GIL") == "1"
# PROFILE_STORE=0: the gateway without the shipper and the embedded store (spool only).
STORE = os.environ.get("PROFILE_STORE", "1") != "0"
TOP = int(os.environ.get("PROFILE_TOP", "25"))
# py-spy's idle detection does not see these blocking waits (the GIL is released inside them): a
# sample whose top frame is one of them is a thread waiting, not working, and is left out.
WAITS = {
    "Condition.wait (threading.py)",
    "_worker (futures/thread.py)",  # an idle executor thread, blocked in its queue's get()
    "Runner.run (asyncio/runners.py)",  # the event loop in epoll_wait (uvloop's run is C)
}
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*):(?P<line>\d+)\)$")


def short(frame: str) -> str:
    """`func (path/to/file.py:123)` → `func (file.py)`: lines differ within one function."""
    m = FRAME.match(frame)
    if not m:
        return frame
    where = "/".join(Path(m.group("file")).parts[-2:])
    return f"{m.group('func')} ({where})"


def summarise(raw: Path, requests: float) -> None:
    """``requests``: how many the load generator completed while py-spy sampled."""
    per_thread: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[tuple[str, str]] = collections.Counter()
    inclusive: collections.Counter[tuple[str, str]] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(?0x[0-9a-f]+\)?|\s*\(\d+\)", "", frames[0]).strip()
        thread = thread.removeprefix("thread: ").replace("MainThread", "event loop")
        calls = [short(f) for f in frames[1:]]
        if not calls or calls[-1] in WAITS:
            waiting += count
            continue
        total += count
        per_thread[thread] += count
        self_time[(thread, calls[-1])] += count
        for name in set(calls):
            inclusive[(thread, name)] += count
    if not total:
        sys.exit("py-spy recorded no samples")
    print(
        f"\n{total} samples of work ({SECONDS} s at 250 Hz, all threads; {waiting} samples of "
        "threads waiting left out); shares below are of the samples of work, with the CPU "
        f"time each stands for per request ({requests:.0f} requests in the window)"
    )

    def us(n: int) -> str:
        return f"{n / RATE / requests * 1e6:7.0f} µs" if requests else ""

    print("\nper thread:")
    for thread, n in per_thread.most_common():
        print(f"  {n / total:6.1%} {us(n)}  {thread}")
    print(f"\nself (top of stack), top {TOP}:")
    for (thread, name), n in self_time.most_common(TOP):
        print(f"  {n / total:6.1%} {us(n)}  {name}  [{thread}]")
    print(f"\ninclusive (anywhere on the stack; a thread's outermost frames left out), top {TOP}:")
    shown = 0
    for (thread, name), n in inclusive.most_common():
        if n >= 0.99 * per_thread[thread]:
            continue  # the thread's own outer frames (on nearly every sample): no information
        print(f"  {n / total:6.1%} {us(n)}  {name}  [{thread}]")
        shown += 1
        if shown == TOP:
            break


def main() -> None:
    for tool in ("py-spy", "wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is required: make profile installs it")
    out = (
        ROOT / "var" / (f"profile-{DURABILITY}.txt" if TARGET == "gateway" else "profile-bare.txt")
    )
    out.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        with processes() as procs:
            under = single(tmp, procs, DURABILITY, store=STORE, bare=TARGET == "bare")
            url, token = under.url, under.token
            auth = f"Authorization: Bearer {token}"
            load = subprocess.Popen(
                pinned("1", ["wrk", "-t1", "-c32", f"-d{SECONDS + 4}s", "-H", auth, url]),
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(2)  # warm: connections, caches, the first batches
            subprocess.run(
                [
                    *("py-spy", "record", "--pid", str(under.pid), "--duration", str(SECONDS)),
                    *("--rate", str(RATE), "--threads", "--format", "raw", "--output", str(out)),
                    *(["--gil"] if GIL else []),
                ],
                check=True,
                capture_output=True,
            )
            stdout, _ = load.communicate()
            rps = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
            what = (
                "bare aiohttp proxy" if TARGET == "bare" else f"pd-gateway durability={DURABILITY}"
            )
            print(
                f"# profile of the {what}, wrk -c32: "
                f"{rps.group(1) if rps else '?'} req/s under py-spy; raw samples in {out}"
            )
            summarise(out, float(rps.group(1)) * SECONDS if rps else 0.0)


if __name__ == "__main__":
    main()
