"""Start a throw-away Debian clickhouse-server on loopback: for tests, `make bench` and the
fault drills. Not used by the gateway itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

SERVER = "/usr/sbin/clickhouse-server"

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <interserver_http_port>{inter}</interserver_http_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <interserver_http_host>127.0.0.1</interserver_http_host>
{extra}
</yandex>
"""

USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


def free_port() -> int:
    """A loopback port free right now (another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return os.path.exists(SERVER) or shutil.which("clickhouse-server") is not None


class ClickHouseServer:
    """A clickhouse-server process on loopback ports, data under ``directory``; restartable."""

    def __init__(self, directory: Path, extra_config: str = "") -> None:
        """``extra_config``: XML elements added inside ``<yandex>`` (a cluster's zookeeper,
        remote_servers and macros: gateway.testing.chcluster)."""
        self.directory = directory
        self.extra_config = extra_config
        self.interserver_port = free_port()
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        (directory / "users.xml").write_text(USERS)

    def _write_config(self) -> None:
        (self.directory / "config.xml").write_text(
            CONFIG.format(
                d=self.directory,
                tcp=self.tcp_port,
                http=self.http_port,
                inter=self.interserver_port,
                extra=self.extra_config,
            )
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart, on the same ports). A first start whose ports were taken between
        choosing and binding them tries again on new ones."""
        for attempt in range(3):
            try:
                self._start(timeout)
                self._started = True
                return
            except RuntimeError:
                if self._started or attempt == 2:
                    raise
                self.tcp_port, self.http_port = free_port(), free_port()
                self._write_config()

    def _start(self, timeout: float) -> None:
        binary = SERVER if os.path.exists(SERVER) else str(shutil.which("clickhouse-server"))
        self.proc = subprocess.Popen(
            [binary, f"--config-file={self.directory / 'config.xml'}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/ping", timeout=1
                ) as r:
                    if r.read().strip() == b"Ok.":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.directory / "log" / "error.log"
        raise RuntimeError(
            "clickhouse-server did not start: " + (log.read_text()[-2000:] if log.exists() else "")
        )

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=4)
            except subprocess.TimeoutExpired:
                self.kill()
