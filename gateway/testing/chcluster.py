"""Start a throw-away ClickHouse cluster on loopback: ZooKeeper (Debian's `zookeeper` package)
and two Debian clickhouse-server 18.16 processes, one shard with two replicas. For the cluster
tests and drills (`clickhouse init --cluster`, shipping, a replica killed under load); not used
by the gateway itself. The production layout is in deploy/clickhouse/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from gateway.testing.chserver import ClickHouseServer, free_port

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
ZOOKEEPER_CONF = "/etc/zookeeper/conf"  # log4j.properties; the package's zoo.cfg is not used

ZOO_CFG = """tickTime=500
initLimit=10
syncLimit=5
dataDir={d}/data
clientPort={port}
clientPortAddress=127.0.0.1
admin.enableServer=false
maxClientCnxns=200
4lw.commands.whitelist=srvr
"""

CLUSTER_XML = """  <zookeeper>
    <node><host>127.0.0.1</host><port>{zk_port}</port></node>
    <session_timeout_ms>6000</session_timeout_ms>
  </zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <remote_servers>
    <{cluster}>
      <shard>
        <internal_replication>true</internal_replication>
{replicas}
      </shard>
    </{cluster}>
  </remote_servers>
  <macros><shard>01</shard><replica>{replica}</replica></macros>
"""


def available() -> bool:
    return os.path.exists(ZOOKEEPER_JAR) and shutil.which("java") is not None


class ZooKeeper:
    """A standalone ZooKeeper on a loopback port with its own data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "zoo.cfg").write_text(ZOO_CFG.format(d=directory, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        java = shutil.which("java") or "/usr/bin/java"
        with (self.directory / "zookeeper.log").open("ab") as log:
            self.proc = self._spawn(java, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("zookeeper did not start: see " + str(self.directory / "zookeeper.log"))

    def _spawn(self, java: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                java,
                "-Xmx256m",
                "-cp",
                f"{ZOOKEEPER_CONF}:{ZOOKEEPER_JAR}",
                f"-Dzookeeper.log.dir={self.directory}",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(self.directory / "zoo.cfg"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )

    def ready(self) -> bool:
        """Serving sessions: `srvr` names its mode only then. (`ruok` answers earlier, and
        clickhouse-server 18.16 dies on a keeper that accepts and then drops its handshake.)"""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"srvr")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
                return b"Mode: standalone" in reply
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ClickHouseCluster:
    """ZooKeeper plus ``replicas`` clickhouse-server processes forming one shard of cluster
    ``name`` (``internal_replication``: a Distributed insert writes one replica, and the
    ReplicatedMergeTree copies it to the others)."""

    def __init__(self, directory: Path, name: str = "audit", replicas: int = 2) -> None:
        self.name = name
        self.zookeeper = ZooKeeper(directory / "zookeeper")
        self.servers = [ClickHouseServer(directory / f"ch{i + 1}") for i in range(replicas)]
        entries = "\n".join(
            f"        <replica><host>127.0.0.1</host><port>{s.tcp_port}</port></replica>"
            for s in self.servers
        )
        for i, server in enumerate(self.servers):
            server.extra_config = CLUSTER_XML.format(
                zk_port=self.zookeeper.port, cluster=name, replicas=entries, replica=f"r{i + 1}"
            )
            server._write_config()

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{s.tcp_port}" for s in self.servers]

    def start(self) -> None:
        self.zookeeper.start()
        try:
            for server in self.servers:
                server.start()
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.zookeeper.stop()
