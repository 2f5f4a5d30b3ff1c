"""`pd-gateway clickhouse init|retention|ddl` and `pd-gateway audit replay`."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import Any

from gateway.audit.segments import gateway_chains
from gateway.audit.shipping.shipper import Shipper, ShipperBusy
from gateway.audit.spool import writer_active
from gateway.audit.store import schema
from gateway.audit.store.base import StoreError, migrate
from gateway.audit.store.factory import open_store
from gateway.audit.store.retention import apply_retention
from gateway.config.load import load_config
from gateway.config.model import StoreConfig
from gateway.core.errors import ConfigError


def register(sub: Any, audit_sub: Any) -> None:
    c = sub.add_parser("clickhouse", help="audit store commands")
    csub = c.add_subparsers(dest="clickhouse_command", required=True)
    init = csub.add_parser("init", help="create or migrate the audit schema (idempotent)")
    init.add_argument("--config", required=True, help="config whose `store` section is used")
    init.add_argument("--cluster", help="emit ON CLUSTER DDL with Replicated/Distributed tables")
    init.set_defaults(run=run_init)
    ddl = csub.add_parser("ddl", help="print the schema DDL without connecting")
    ddl.add_argument("--database", default="pd_audit", help="database name (default pd_audit)")
    ddl.add_argument("--cluster", help="emit ON CLUSTER DDL for this cluster")
    ddl.add_argument("--server-version", default="24.8", help="picks modern or legacy types")
    ddl.set_defaults(run=run_ddl)
    ret = csub.add_parser("retention", help="drop audit partitions older than the retention period")
    ret.add_argument("--config", required=True, help="config whose `store` section is used")
    ret.add_argument(
        "--keep-days", type=int, required=True, help="keep partitions newer than this many days"
    )
    ret.add_argument("--dry-run", action="store_true", help="list what would be dropped")
    ret.add_argument("--actor", default=None, help="who ordered it (default: the OS user)")
    ret.add_argument(
        "--reason",
        default="retention period ended (4.7-4.9)",
        help="recorded with each dropped partition (7.3)",
    )
    ret.set_defaults(run=run_retention)

    rp = audit_sub.add_parser(
        "replay", help="ship a spool directory to the store (e.g. a dead instance's)"
    )
    rp.add_argument(
        "--spool",
        required=True,
        help="the spool directory to ship: a gateway's audit.spool_dir ships every chain in it "
        "(the supervisor's and each worker's w<i>)",
    )
    rp.add_argument("--config", required=True, help="config whose `store` section is used")
    rp.set_defaults(run=run_replay)


def store_config(path: str) -> StoreConfig:
    cfg = load_config(path)
    if cfg.store is None:
        raise ConfigError(["store: is required for this command"], path)
    return cfg.store


def run_init(args: argparse.Namespace) -> int:
    store_cfg = store_config(args.config)
    try:
        store = open_store(store_cfg, apply_schema=False)
        applied = migrate(store, cluster=args.cluster or store_cfg.cluster)
        variant = "modern" if store.modern else "legacy"
        done = f"applied migrations {applied}" if applied else "schema up to date"
        print(
            f"{store.engine} {store.server_version()} ({variant} types), {store.database}: {done}"
        )
        store.close()
    except StoreError as e:
        print(f"pd-gateway: audit store: {e}", file=sys.stderr)
        return 1
    return 0


def run_ddl(args: argparse.Namespace) -> int:
    modern = schema.is_modern(args.server_version)
    for stmt in schema.schema_ddl(args.database, modern=modern, cluster=args.cluster):
        print(stmt + ";\n")
    return 0


def run_retention(args: argparse.Namespace) -> int:
    store_cfg = store_config(args.config)
    cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=args.keep_days)
    try:
        store = open_store(store_cfg)
        dropped = apply_retention(
            store,
            cutoff,
            actor=args.actor or getpass.getuser(),
            reason=args.reason,
            dry_run=args.dry_run,
        )
        store.close()
    except StoreError as e:
        print(f"pd-gateway: audit store: {e}", file=sys.stderr)
        return 1
    verb = "would drop" if args.dry_run else "dropped"
    for d in dropped:
        print(f"{verb} {d.table} partition {d.partition} ({d.rows} rows)")
    print(f"{len(dropped)} partitions {verb}; cutoff {cutoff}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    store_cfg = store_config(args.config)
    top = Path(args.spool)
    if not top.is_dir():
        print(f"pd-gateway: {top}: no such spool directory", file=sys.stderr)
        return 2
    worst = 0
    for _, directory in gateway_chains(top):  # decision 030: one chain per process
        worst = max(worst, _replay(store_cfg, directory))
    return worst


def _replay(store_cfg: StoreConfig, directory: Path) -> int:
    if writer_active(directory):
        print(
            f"pd-gateway: {directory}: a running gateway is writing this spool; "
            "replay is for a stopped instance's spool",
            file=sys.stderr,
        )
        return 1
    shipper = Shipper(
        directory, lambda: open_store(store_cfg), batch_max_rows=store_cfg.batch_max_rows
    )
    try:
        shipper.acquire()
    except ShipperBusy:
        print(
            f"pd-gateway: {directory}: a running gateway or replay is shipping this spool",
            file=sys.stderr,
        )
        return 1
    try:
        # A dead instance's spool: accesses still pending at its end will never get an outcome.
        n = shipper.run(follow=False, finalize_at_end=True)
    finally:
        shipper.release()
    torn = (
        f"; {shipper.torn_lines} torn final lines skipped (never acknowledged)"
        if shipper.torn_lines
        else ""
    )
    print(f"{directory}: {n} events shipped; {shipper.bad_records} unreadable records{torn}")
    return 0 if shipper.bad_records == 0 else 1  # a torn final line is not an error (001)
