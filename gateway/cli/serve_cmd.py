"""`pd-gateway serve --config FILE [--workers N]`: a supervisor and its workers (decision 030)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.audit.shipping.shipper import ShipperBusy
from gateway.config.load import load_config
from gateway.core import logs
from gateway.core.errors import SpoolUnavailable
from gateway.runtime.supervisor import Supervisor, WorkerFailed
from gateway.runtime.worker import serve_worker, worker_name


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


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
    p.add_argument(
        "--workers",
        type=_positive,
        help="worker processes that serve requests on the proxy port, under the supervisor that "
        "owns the store and the admin port (default: the config's `workers`, 1; "
        "docs/decisions/030-one-shape.md)",
    )
    internal = "internal, set by the supervisor"
    p.add_argument("--worker", type=int, help=f"{internal}: run as worker I")
    p.add_argument("--worker-fd", type=int, help=f"{internal}: the proxy port's socket")
    p.add_argument("--console-fd", type=int, help=f"{internal}: the console port's socket")
    p.add_argument("--supervisor-pid", type=int, help=f"{internal}: exit when it is gone")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    cfg = load_config(args.config)
    spool_dir: Path = cfg.audit.spool_dir
    main: Coroutine[Any, Any, None]
    if args.worker is not None:
        spool_dir = spool_dir / worker_name(args.worker)
        main = serve_worker(cfg, args.worker, args.worker_fd, args.supervisor_pid, args.console_fd)
    else:  # one shape, whatever the number of workers: the store never where requests are served
        passed_on = ["--config", args.config, "--log-level", args.log_level]
        main = Supervisor(cfg, args.workers or cfg.workers, passed_on).run()
    try:
        _run_loop(main)
    except (ShipperBusy, SpoolUnavailable):
        # Start-up found the spool's writer or shipper lock held: another gateway (or an
        # `audit replay`) owns this directory. Each instance needs a spool of its own.
        print(
            f"pd-gateway: {args.config}: audit.spool_dir {spool_dir} is in use by "
            "another gateway or replay; stop it or give this instance its own spool_dir",
            file=sys.stderr,
        )
        return 1
    except WorkerFailed as e:  # the worker printed why; this names which one
        print(f"pd-gateway: {args.config}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        ports = f"{cfg.proxy_listen.port} (listen.proxy) or {cfg.admin_listen.port} (listen.admin)"
        print(f"pd-gateway: {args.config}: port {ports} is already in use", file=sys.stderr)
        return 1
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, ~2x slower
        asyncio.run(main)
    else:
        uvloop.run(main)
