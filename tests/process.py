"""Run the real `pd-gateway serve` in a subprocess, for tests about signals, crashes and memory.

`pd-gateway serve` is a supervisor and its workers (decision 030): the process started here is
the supervisor (the admin port, the store, its own chain in ``spool``); requests are answered by
worker ``w0`` (and more with ``--workers N``), each with its chain in ``spool/w<i>``. Read every
chain with ``tests.conftest.gateway_events``/``gateway_records``.
"""

from __future__ import annotations

import contextlib
import json
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
        self.console = ""  # the console's listener, with a console section (decision 035)
        self.spool = spool

        self._workers: set[int] = set()  # every worker pid seen: waited for at the end

    def serving_spool(self, index: int = 0) -> Path:
        """The spool of worker ``index``: the chain of the requests it answered."""
        return self.spool / f"w{index}"

    def worker_pid(self, index: int = 0) -> int:
        """The pid of worker ``index`` (the process that serves requests), as it reported it."""
        pid = int(json.loads((self.serving_spool(index) / "worker.json").read_text())["pid"])
        self._workers.add(pid)
        return pid

    def rss_peak_kib(self, pid: int | None = None) -> int:
        """VmHWM: the highest resident set size the process (default: worker w0) has had."""
        pid = pid or self.worker_pid()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal the supervisor and wait for it and for its workers (a SIGKILLed supervisor's
        workers are ended by the kernel's parent-death signal, SIGTERM: they drain)."""
        self._see_workers()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.wait_workers()
        return code

    def crash(self) -> None:
        """SIGKILL the serving process (worker w0) and the supervisor at once: nothing drains,
        nothing is flushed by a handler."""
        pid = self.worker_pid()
        self._see_workers()
        os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.wait_workers()

    def crash_worker(self, index: int = 0) -> None:
        """SIGKILL worker ``index`` and wait until it is gone (its supervisor starts it again)."""
        pid = self.worker_pid(index)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} did not die"
            time.sleep(0.01)

    def _see_workers(self) -> None:
        for report in self.spool.glob("w*/worker.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._workers.add(int(json.loads(report.read_text())["pid"]))

    def wait_workers(self, timeout: float = 30) -> None:
        """Until no worker of this gateway is alive (so its spool may be opened again)."""
        self._see_workers()
        deadline = time.monotonic() + timeout
        for pid in self._workers:
            while _alive(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running (a zombie is not: the supervisor is gone and it waits for no one to reap it)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


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
    gp.wait_workers()
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
        console_port = free_port() if "console" in data else None
        if console_port is not None:  # the console's own listener (decision 035)
            data["console"] = {**data["console"]}
            data["console"].setdefault("listen", {})["port"] = console_port
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
        if console_port is not None:
            scheme = "https" if "tls" in data["console"]["listen"] else "http"
            gp.console = f"{scheme}://127.0.0.1:{console_port}"
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
        gp._see_workers()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gp.wait_workers()
        log.close()
