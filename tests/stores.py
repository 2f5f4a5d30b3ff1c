"""Real audit stores for tests: Debian's clickhouse-server on loopback, and chdb in-process.

chdb allows one data directory per process, so every in-process test shares one directory and
gets a database of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.store.base import AuditStore
from gateway.config.model import StoreConfig
from gateway.testing.chserver import ClickHouseServer, available

ENGINES = ["embedded", "clickhouse"]


def require_server() -> None:
    if not available():
        pytest.fail("clickhouse-server is required (Debian package); `make test` installs it")


@pytest.fixture(scope="session")
def ch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    require_server()
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_ch_server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of this test's own, to kill and restart."""
    require_server()
    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


def fresh_database() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def store_section(
    kind: str, database: str, *, chdb_dir: Path, server: ClickHouseServer | None, **extra: Any
) -> dict[str, Any]:
    section: dict[str, Any] = {"kind": kind, "database": database, "batch_max_age_ms": 50, **extra}
    if kind == "embedded":
        section["path"] = str(chdb_dir)
    else:
        assert server is not None
        section["hosts"] = [f"127.0.0.1:{server.tcp_port}"]
        section.setdefault("send_receive_timeout_seconds", 5)
        section.setdefault("connect_timeout_seconds", 1)
        section.setdefault("retry_max_backoff_seconds", 1)
    return section


def store_config(section: dict[str, Any]) -> StoreConfig:
    hosts = tuple(
        (h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in section.get("hosts", [])
    )
    keys = {
        "batch_max_age_ms",
        "send_receive_timeout_seconds",
        "connect_timeout_seconds",
        "retry_max_backoff_seconds",
        "batch_max_rows",
    }
    return StoreConfig(
        kind=section["kind"],
        database=section["database"],
        path=Path(section["path"]) if "path" in section else None,
        hosts=hosts,
        **{k: v for k, v in section.items() if k in keys},
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def count(store: AuditStore, table: str = "access_events", where: str = "1") -> int:
    rows = store.select(f"SELECT count() AS n FROM {store.database}.{table} WHERE {where}")
    return int(rows[0]["n"])


def chain_numbers(store: AuditStore) -> list[int]:
    """Every sequence number the store holds for chained records, sorted: access records,
    their outcome records, permission changes and refusal summaries. 1..N means nothing lost
    and nothing doubled (docs/decisions/012-hash-chain.md)."""
    db = store.database
    out: list[int] = []
    for sql in (
        f"SELECT seq AS n FROM {db}.access_events WHERE record_v >= 2",
        f"SELECT outcome_seq AS n FROM {db}.access_events WHERE outcome_seq > 0",
        f"SELECT seq AS n FROM {db}.permission_change_records WHERE record_v >= 2",
        f"SELECT seq AS n FROM {db}.refusal_summaries",
        f"SELECT seq AS n FROM {db}.auth_events",
        f"SELECT seq AS n FROM {db}.subject_blocks",
    ):
        out += [int(r["n"]) for r in store.select(sql)]
    return sorted(out)
