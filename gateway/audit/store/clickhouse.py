"""AuditStore on a ClickHouse server, through clickhouse-driver (native protocol).

One Client, used only by the thread that owns the store (the driver forbids sharing a Client
between threads). Several hosts fail over in order (`alt_hosts`). Every library or network error
becomes StoreError and drops the connection, so the next call reconnects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from gateway.audit.store import schema
from gateway.audit.store.base import Row, StoreError, columns_of, query_id
from gateway.audit.store.schema import Table


@dataclass(frozen=True)
class ClickHouseParams:
    hosts: tuple[tuple[str, int], ...]
    database: str
    user: str = "default"
    password: str = ""
    secure: bool = False
    ca_file: str | None = None
    connect_timeout: float = 5.0
    send_receive_timeout: float = 30.0
    cluster: str | None = None


class ClickHouseStore:
    engine = "clickhouse"

    def __init__(self, params: ClickHouseParams) -> None:
        self.params = params
        self.database = params.database
        self._client: Client | None = None
        self._version: str | None = None
        timeout = int(max(1, params.send_receive_timeout))
        # If this client vanishes mid-insert, the server gives up on it after the same timeout
        # (its default is 300 s), so a check-before-retry never waits long for a dead insert.
        self._insert_settings: dict[str, Any] = {
            "receive_timeout": timeout,
            "send_timeout": timeout,
        }
        if params.cluster:
            # On a cluster, insert through the Distributed table synchronously: the batch must
            # be in the shards before it counts as confirmed (and before a check can see it).
            self._insert_settings["insert_distributed_sync"] = 1

    def _conn(self) -> Client:
        if self._client is None:
            p = self.params
            (host, port), *alt = p.hosts
            kwargs: dict[str, Any] = {
                "host": host,
                "port": port,
                "user": p.user,
                "password": p.password,
                "secure": p.secure,
                "connect_timeout": p.connect_timeout,
                "send_receive_timeout": p.send_receive_timeout,
                "sync_request_timeout": p.connect_timeout,
                "settings": {"use_client_time_zone": False},
            }
            if alt:
                kwargs["alt_hosts"] = ",".join(f"{h}:{port_}" for h, port_ in alt)
            if p.secure and p.ca_file:
                kwargs["ca_certs"] = p.ca_file
                kwargs["verify"] = True
            self._client = Client(**kwargs)
        return self._client

    def _run(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._conn().execute(sql, *args, **kwargs)
        except (ch_errors.Error, OSError, EOFError) as e:
            self.close()
            raise StoreError(f"{type(e).__name__}: {getattr(e, 'code', '')}") from e

    def server_version(self) -> str:
        if self._version is None:
            self._version = str(self._run("SELECT version()")[0][0])
        return self._version

    @property
    def modern(self) -> bool:
        return schema.is_modern(self.server_version())

    def execute(self, sql: str) -> None:
        self._run(sql)

    def insert(self, table: Table, rows: Sequence[Row], batch_id: str) -> None:
        cols = ", ".join(f"`{n}`" for n in table.column_names)
        self._run(
            f"INSERT INTO {self.database}.{table.name} ({cols}) VALUES",
            columns_of(table, rows),
            columnar=True,
            query_id=query_id(table, batch_id),
            # On a cluster, insert through the Distributed table synchronously: the batch must
            # be in the shards before it counts as confirmed (and before a check can see it).
            settings=self._insert_settings,
        )

    def batch_rows(self, table: Table, batch_id: str) -> int:
        sql = f"SELECT count() FROM {self.database}.{table.name} WHERE batch_id = %(b)s"
        return int(self._run(sql, {"b": batch_id})[0][0])

    def insert_running(self, batch_id: str) -> bool:
        sql = "SELECT count() FROM system.processes WHERE startsWith(query_id, %(b)s)"
        return int(self._run(sql, {"b": batch_id + ":"})[0][0]) > 0

    def select(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Row]:
        rows, columns = self._run(
            sql, dict(params or {}), with_column_types=True, settings=dict(settings or {})
        )
        names = [c[0] for c in columns]
        return [dict(zip(names, r, strict=True)) for r in rows]

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client = None
