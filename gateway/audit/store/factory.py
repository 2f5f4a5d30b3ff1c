"""Build the configured AuditStore (and run its migrations when the config says so)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from gateway.audit.store.base import AuditStore, migrate
from gateway.config.model import StoreConfig


def open_store(cfg: StoreConfig, *, apply_schema: bool | None = None) -> AuditStore:
    """Connect (lazily for a server) and, if ``apply_schema``, bring the schema up to date.

    The engines' libraries are imported here, on first use, never by importing this module: a
    process that serves requests imports the factory (for its types and ``reader``) but opens no
    store, and must not load chdb, pyarrow or clickhouse-driver (decision 030)."""
    store: AuditStore
    if cfg.kind == "embedded":
        from gateway.audit.store.embedded import EmbeddedStore  # optional dependency

        assert cfg.path is not None  # validated by config
        store = EmbeddedStore(cfg.path, cfg.database)
    else:
        from gateway.audit.store.clickhouse import ClickHouseParams, ClickHouseStore

        store = ClickHouseStore(
            ClickHouseParams(
                hosts=cfg.hosts,
                database=cfg.database,
                user=cfg.user,
                password=cfg.password.reveal(),
                secure=cfg.secure,
                ca_file=str(cfg.ca_file) if cfg.ca_file else None,
                connect_timeout=cfg.connect_timeout_seconds,
                send_receive_timeout=cfg.send_receive_timeout_seconds,
                cluster=cfg.cluster,
            )
        )
    if cfg.apply_schema if apply_schema is None else apply_schema:
        migrate(store, cluster=cfg.cluster)
    return store


def reader(cfg: StoreConfig | None) -> Callable[[], contextlib.closing[AuditStore]] | None:
    """Opens a store for one investigation query, in the thread that runs it, and closes it after.

    On a server: a connection of the query's own (clickhouse-driver: one Client per thread). On
    the embedded store: the process's own data directory again — chdb shares one engine per
    process, and ``EmbeddedStore`` serialises every call to it with the shipper's.
    """
    if cfg is None:
        return None
    return lambda: contextlib.closing(open_store(cfg, apply_schema=False))
