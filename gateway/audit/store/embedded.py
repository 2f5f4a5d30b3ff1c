"""AuditStore inside the gateway process: chdb, a ClickHouse engine persistent on a directory.

The default for the demo and a first run: a real ClickHouse engine with no server to install.
chdb allows one process per data directory and one directory per process, so the gateway that
owns the directory is the only reader; investigation tools query through it. Calls release the
GIL and are serialised by a lock.

Inserts go in as Arrow columns (``INSERT … SELECT * FROM Python(batch)``), typed from the
table's schema: no per-row JSON text is built and parsed again (docs/decisions/017-store-insert.md).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from gateway.audit.store.base import Row, StoreError, columns_of
from gateway.audit.store.schema import Table, column_type

_PARAM = re.compile(r"%\((\w+)\)s")
# One chdb engine per process, whichever session calls it (the shipper's, the anomaly
# detector's, the audit query API's): every call is serialised.
_ENGINE_LOCK = threading.Lock()


# ClickHouse column type → the Arrow type its values are handed over as. Each converts to the
# column exactly (DateTime64(6) from microseconds, UInt64 beyond 2**63, UTF-8 strings as bytes); a
# null (a value the record lacks) becomes the column's default, as JSONEachRow made it.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "LowCardinality(String)": pa.string(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Date": pa.date32(),
    "DateTime('UTC')": pa.timestamp("s", tz="UTC"),
    "DateTime64(6, 'UTC')": pa.timestamp("us", tz="UTC"),
}


def arrow_type(ch_type: str) -> pa.DataType:
    """The Arrow type for a ClickHouse column type of the audit schema (KeyError if unknown)."""
    if ch_type.startswith("Array(") and ch_type.endswith(")"):
        return pa.list_(arrow_type(ch_type[len("Array(") : -1]))
    return _ARROW_TYPES[ch_type]


class EmbeddedStore:
    engine = "embedded"
    modern = True  # chdb-core is ClickHouse 26.x

    def __init__(self, path: Path, database: str) -> None:
        try:
            from chdb import session
        except ImportError as e:  # optional dependency: pd-gateway[embedded]
            raise StoreError("chdb is not installed: pip install 'pd-gateway[embedded]'") from e
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.database = database
        self._lock = _ENGINE_LOCK
        self._schemas: dict[Table, pa.Schema] = {}
        try:
            self._session = session.Session(str(path))
        except Exception as e:
            raise StoreError(f"cannot open embedded store at {path}: {e}") from e

    def _query(
        self, sql: str, fmt: str = "JSONEachRow", params: Mapping[str, Any] | None = None
    ) -> str:
        try:
            with self._lock:
                result = self._session.query(sql, fmt, params=dict(params) if params else None)
        except Exception as e:
            raise StoreError(f"embedded store: {type(e).__name__}") from e
        return "" if result is None else result.bytes().decode()

    def server_version(self) -> str:
        return self._query("SELECT version() AS v", "TabSeparated").strip()

    def execute(self, sql: str) -> None:
        self._query(sql, "TabSeparated")

    def insert(self, table: Table, rows: Sequence[Row], batch_id: str) -> None:
        schema = self._schemas.get(table)
        if schema is None:
            schema = self._schemas[table] = pa.schema(
                [(name, arrow_type(column_type(kind, modern=True))) for name, kind in table.columns]
            )
        columns = [
            pa.array(values, type=field.type)
            for values, field in zip(columns_of(table, rows), schema, strict=True)
        ]
        # chdb's Python() table function finds the object by its name in the calling frames.
        pdgw_insert_batch = pa.Table.from_arrays(columns, schema=schema)  # noqa: F841
        cols = ", ".join(f"`{n}`" for n in table.column_names)
        self._query(
            f"INSERT INTO {self.database}.{table.name} ({cols}) "
            "SELECT * FROM Python(pdgw_insert_batch)",
            "TabSeparated",
        )

    def batch_rows(self, table: Table, batch_id: str) -> int:
        rows = self.select(
            f"SELECT count() AS n FROM {self.database}.{table.name} WHERE batch_id = %(b)s",
            {"b": batch_id},
        )
        return int(rows[0]["n"])

    def insert_running(self, batch_id: str) -> bool:
        return False  # in-process: an insert has finished or failed when insert() returns

    def select(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Row]:
        # The same %(name)s placeholders as clickhouse-driver, as typed chdb parameters.
        values = dict(params or {})
        sql = _PARAM.sub(lambda m: "{" + m.group(1) + ":" + _ch_type(values[m.group(1)]) + "}", sql)
        if settings:  # names from our code only; values are numbers or quoted words
            sql += " SETTINGS " + ", ".join(f"{k} = {_setting(v)}" for k, v in settings.items())
        text = self._query(sql, "JSONEachRow", values)
        return [json.loads(line) for line in text.splitlines() if line]

    def close(self) -> None:
        with self._lock:
            self._session.close()


def _setting(value: Any) -> str:
    return str(int(value)) if isinstance(value, int | float) else "'" + str(value) + "'"


def _ch_type(value: Any) -> str:
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Int64"
    if isinstance(value, float):
        return "Float64"
    if isinstance(value, dt.datetime):
        return "DateTime64(6, 'UTC')"
    return "String"
