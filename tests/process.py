"""Run the real `pd-gateway serve` in a subprocess, for tests about signals, crashes and memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import Keys, config_dict, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class GatewayProcess:
    def __init__(
        self, proc: subprocess.Popen[bytes], proxy_port: int, admin_port: int, spool: Path
    ) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{proxy_port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.spool = spool

    def rss_peak_kib(self) -> int:
        """VmHWM: the highest resident set size the process has had."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@contextmanager
def run_gateway(
    tmp_path: Path,
    keys: Keys,
    upstream_url: str,
    *,
    preexec: Callable[[], None] | None = None,
    **overrides: Any,
) -> Iterator[GatewayProcess]:
    proxy_port, admin_port = free_port(), free_port()
    data = config_dict(tmp_path, upstream_url, **overrides)
    data["listen"] = {"proxy": {"port": proxy_port}, "admin": {"port": admin_port}}
    path = write_config(tmp_path, data, keys)
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    gp = GatewayProcess(proc, proxy_port, admin_port, Path(data["audit"]["spool_dir"]))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(gp.admin + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "gateway did not start:\n" + (tmp_path / "gateway.log").read_text()
                )
            time.sleep(0.05)
        yield gp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
