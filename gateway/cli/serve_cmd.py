"""`pd-gateway serve --config FILE`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway import config, logs
from gateway.app import serve


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the proxy and admin listeners")
    p.add_argument("--config", required=True, help="gateway YAML config")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    cfg = config.load(args.config)
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, ~2x slower
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
    return 0
