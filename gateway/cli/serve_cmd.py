"""`pd-gateway serve --config FILE`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from typing import Any

from gateway import config, logs
from gateway.app import serve
from gateway.audit.shipper import ShipperBusy
from gateway.errors import SpoolUnavailable


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the proxy and admin listeners")
    p.add_argument("--config", required=True, help="gateway YAML config")
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="operational log level (JSON lines on stderr; default INFO)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    cfg = config.load(args.config)
    try:
        _run_loop(cfg)
    except (ShipperBusy, SpoolUnavailable):
        # Start-up found the spool's writer or shipper lock held: another gateway (or an
        # `audit replay`) owns this directory. Each instance needs a spool of its own.
        print(
            f"pd-gateway: {args.config}: audit.spool_dir {cfg.audit.spool_dir} is in use by "
            "another gateway or replay; stop it or give this instance its own spool_dir",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        ports = f"{cfg.proxy_listen.port} (listen.proxy) or {cfg.admin_listen.port} (listen.admin)"
        print(f"pd-gateway: {args.config}: port {ports} is already in use", file=sys.stderr)
        return 1
    return 0


def _run_loop(cfg: config.Config) -> None:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, ~2x slower
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
