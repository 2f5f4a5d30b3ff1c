"""Run the real `pd-gateway serve` in a subprocess, for tests about signals, crashes and memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.testing.chserver import free_port
from tests.conftest import Keys, config_dict, write_config


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


def _wait_ready(gp: GatewayProcess, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(gp.admin + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if gp.proc.poll() is not None:
            return False
        time.sleep(0.05)
    gp.proc.kill()
    gp.proc.wait()
    return False


@contextmanager
def run_gateway(
    tmp_path: Path,
    keys: Keys,
    upstream_url: str,
    *,
    preexec: Callable[[], None] | None = None,
    args: Sequence[str] = (),
    proxy_port: int | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Iterator[GatewayProcess]:
    """``args``: more `serve` arguments (e.g. ``--workers 2``); ``proxy_port``: the port an OpenID
    provider's client was registered for; ``env``: more environment for the process."""
    fixed = proxy_port
    for attempt in range(3):  # ports chosen free can be taken before the gateway binds them
        proxy_port, admin_port = fixed or free_port(), free_port()
        data = config_dict(tmp_path, upstream_url, **overrides)
        listen = data.setdefault("listen", {})
        listen.setdefault("proxy", {})["port"] = proxy_port
        listen.setdefault("admin", {})["port"] = admin_port
        path = write_config(tmp_path, data, keys)
        log = (tmp_path / "gateway.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        )
        gp = GatewayProcess(proc, proxy_port, admin_port, Path(data["audit"]["spool_dir"]))
        if "tls" in listen["proxy"]:
            gp.url = gp.url.replace("http://", "https://", 1)
        if _wait_ready(gp):
            break
        log.close()
        text = (tmp_path / "gateway.log").read_text()
        if "address already in use" not in text.lower() or attempt == 2:
            raise AssertionError("gateway did not start:\n" + text)
    try:
        yield gp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
