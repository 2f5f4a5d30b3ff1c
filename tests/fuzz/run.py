"""Run every fuzz target for a bounded time (`make fuzz`; `make test` runs it): FUZZ_SECONDS each.

Each target runs in a process of its own under atheris (libFuzzer, coverage-guided); a finding
stops it with a non-zero exit and a `crash-*` file holding the input, which this script names.
Corpora live under var/fuzz/ (not committed) so later runs start from what earlier ones found.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGETS = ("fuzz_paths", "fuzz_headers", "fuzz_tokens", "fuzz_sessions", "fuzz_addresses")


def main() -> int:
    seconds = int(os.environ.get("FUZZ_SECONDS", "20"))
    failed = []
    for target in TARGETS:
        corpus = ROOT / "var" / "fuzz" / target
        corpus.mkdir(parents=True, exist_ok=True)
        artifacts = ROOT / "var" / "fuzz" / "findings"
        artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            f"tests.fuzz.{target}",
            f"-max_total_time={seconds}",
            "-rss_limit_mb=2048",
            "-max_len=4096",
            f"-artifact_prefix={artifacts}/{target}-",
            "-print_final_stats=1",
            *(
                [f"-dict={HERE / (target + '.dict')}"]
                if (HERE / (target + ".dict")).exists()
                else []
            ),
            str(corpus),
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        stats = [
            ln
            for ln in proc.stderr.splitlines()
            if ln.startswith(("stat::number_of_executed_units", "Done"))
        ]
        runs = next((ln.split(":")[-1].strip() for ln in stats if "executed_units" in ln), "?")
        verdict = "ok" if proc.returncode == 0 else f"FINDING (exit {proc.returncode})"
        print(f"fuzz {target}: {runs} inputs in {seconds} s: {verdict}")
        if proc.returncode != 0:
            failed.append(target)
            print(proc.stderr[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
