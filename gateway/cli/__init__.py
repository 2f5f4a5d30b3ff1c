"""`pd-gateway` command line: thin commands that call into the layers below."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from gateway.cli import (
    audit_cmd,
    config_cmd,
    evidence_cmd,
    investigate_cmd,
    policy_cmd,
    serve_cmd,
    session_cmd,
    store_cmd,
    subject_cmd,
    token_cmd,
    verify_cmd,
)
from gateway.core.errors import ConfigError, GatewayError, PolicyError


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; tests walk it (each option has help)."""
    parser = argparse.ArgumentParser(prog="pd-gateway", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd.register(sub)
    config_cmd.register(sub)
    audit_sub = audit_cmd.register(sub)
    store_cmd.register(sub, audit_sub)
    verify_cmd.register(audit_sub)
    investigate_cmd.register(audit_sub)
    subject_cmd.register(sub)
    investigate_cmd.register_report(audit_sub)
    token_cmd.register(sub)
    policy_cmd.register(sub)
    session_cmd.register(sub)
    evidence_cmd.register(sub)
    return parser


def _version() -> str:
    try:
        return version("pd-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    except PolicyError as e:
        print(f"pd-gateway: policy error: {e}", file=sys.stderr)
        return 2
    except GatewayError as e:  # e.g. the spool directory is in use by another gateway
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
