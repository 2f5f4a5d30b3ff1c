"""`make soak`: resident memory of the gateway under steady load (docs/benchmarks.md: "no growth
over a 10-minute soak").

The gateway runs the pipeline of `make bench` (bench/run.py's gateway_config: token, decision,
chained audit; shipping into the embedded store by the supervisor, decision 030): its worker —
the process that serves — pinned to CPU 0, its supervisor on CPU 1 beside wrk -c32, which drives
it for SOAK_SECONDS (default 600) against the nginx upstream. Every SOAK_SAMPLE seconds (default
30) this prints the RSS of the serving process and of the supervisor, the requests served so far
(from the gateway's own metrics) and the spools' backlog. At the end it compares the RSS of the
last third of the run with the middle third, for each process: steady memory means the
difference is small and not proportional to the requests served in between.

    SOAK_SECONDS=600 SOAK_DURABILITY=batch make soak
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # bench/ is a script directory
    pinned,
    processes,
    rss_mib,
    single,
)

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
SAMPLE = int(os.environ.get("SOAK_SAMPLE", "30"))
DURABILITY = os.environ.get("SOAK_DURABILITY", "batch")


def scrape(admin: int) -> dict[str, float]:
    """The gateway's request and spool figures from its own /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    requests = sum(
        float(m.group(1))
        for m in re.finditer(
            r'^pdgw_requests_total\{[^}]*decision="allow"[^}]*\} (\S+)$', text, re.M
        )
    )
    backlog = sum(
        float(m.group(1))
        for m in re.finditer(r"^pdgw_spool_backlog_bytes\{[^}]*\} (\S+)$", text, re.M)
    )
    return {"requests": requests, "backlog": backlog}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        with processes() as procs:
            under = single(tmp, procs, DURABILITY, ttl=SECONDS + 3600)
            gateway, admin, url, token = under.pid, under.admin, under.url, under.token
            supervisor = under.store_pid
            load = subprocess.Popen(
                pinned(
                    "1",
                    [
                        *("wrk", "-t1", "-c32", f"-d{SECONDS}s"),
                        *("-H", f"Authorization: Bearer {token}", url),
                    ],
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            print(
                f"# soak: pd-gateway durability={DURABILITY}, embedded store, wrk -c32 for "
                f"{SECONDS} s, RSS every {SAMPLE} s"
            )
            print(
                f"{'t s':>6} {'serving RSS MiB':>15} {'supervisor RSS MiB':>18} {'requests':>10} "
                f"{'backlog KiB':>12}"
            )
            start = time.monotonic()
            series: list[tuple[float, float, float, float]] = []
            while load.poll() is None:
                time.sleep(SAMPLE)
                t = time.monotonic() - start
                if t > SECONDS + 1:
                    break
                m = scrape(admin)
                rss = rss_mib(gateway)
                sup = rss_mib(supervisor, children=False)
                series.append((t, rss, m["requests"], sup))
                print(
                    f"{t:6.0f} {rss:15.1f} {sup:18.1f} {m['requests']:10.0f} "
                    f"{m['backlog'] / 1024:12.0f}"
                )
            out, _ = load.communicate()
            rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
            print(f"wrk: {rps.group(1) if rps else '?'} req/s over the run")
            third = max(1, len(series) // 3)
            middle = series[third : 2 * third] or series
            last = series[2 * third :] or series
            served = last[-1][2] - middle[0][2]
            for label, col in (("serving process", 1), ("supervisor", 3)):
                grew = statistics.median(r[col] for r in last) - statistics.median(
                    r[col] for r in middle
                )
                print(
                    f"{label} RSS median, last third against middle third: {grew:+.1f} MiB over "
                    f"{served:.0f} requests ({grew * 1024 * 1024 / max(served, 1):.1f} "
                    "bytes/request); peak "
                    f"{max(r[col] for r in series):.1f} MiB"
                )


if __name__ == "__main__":
    main()
