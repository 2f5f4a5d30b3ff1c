"""Loading the configuration: one YAML file, read once and validated completely.

Every problem is collected before failing, each with the file, line and key path, so an operator
fixes a config in one pass (``ConfigError.problems``). Security settings (issuer, audience,
algorithms, trusted proxies) have no silent defaults. Relative paths are resolved against the
config file's directory. Each section is read by the module of its name; the defaults are the
model's (``gateway.config.model``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.config.anomalies import parse_anomalies
from gateway.config.audit import parse_audit
from gateway.config.authz import parse_authz
from gateway.config.console import parse_console
from gateway.config.identity import parse_identity
from gateway.config.listen import parse_listeners
from gateway.config.model import Config
from gateway.config.oidc import parse_oidc
from gateway.config.proxy import parse_proxy
from gateway.config.reader import Problems, Section, at_least, line_index, name
from gateway.config.routes import parse_routes
from gateway.config.store import parse_store
from gateway.config.subject_requests import parse_evidence, parse_subject_requests
from gateway.config.upstreams import parse_upstreams
from gateway.core.errors import ConfigError


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read file: {e.strerror}"], str(source)) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError([f"{where}{problem}"], str(source)) from e
    lines = line_index(node) if node is not None else {}
    return parse_config(data, source, lines)


def parse_config(data: Any, source: Path, lines: Mapping[str, int] | None = None) -> Config:
    """A config from an already parsed document (``lines``: key path → line, for messages)."""
    problems = Problems(lines or {}, source.parent)
    top = Section(data, "", problems)
    demo = top.get("demo", bool, False)
    instance_id = top.get("instance_id", str, socket.gethostname(), name)
    # The processes that serve requests under the supervisor (decision 030); --workers overrides.
    workers = top.get("workers", int, Config.workers, at_least(1))
    proxy_listen, admin_listen = parse_listeners(top)
    identity = parse_identity(top, demo)
    authz = parse_authz(top)
    audit = parse_audit(top)
    store = parse_store(top)
    anomalies = parse_anomalies(top)
    proxy = parse_proxy(top)
    upstreams, upstream_tls = parse_upstreams(top)
    routes = parse_routes(top, upstreams)
    oidc = parse_oidc(top, proxy_listen.tls is not None, routes)
    console = parse_console(top, oidc, store, proxy_listen)
    subject_requests = parse_subject_requests(top)
    evidence = parse_evidence(top)
    top.finish()
    if problems.items:
        raise ConfigError(problems.items, str(source))
    return Config(
        source=source.resolve(),
        demo=demo,
        instance_id=instance_id,
        proxy_listen=proxy_listen,
        admin_listen=admin_listen,
        identity=identity,
        authz=authz,
        audit=audit,
        proxy=proxy,
        upstreams=upstreams,
        routes=routes,
        store=store,
        upstream_tls=upstream_tls,
        oidc=oidc,
        anomalies=anomalies,
        console=console,
        subject_requests=subject_requests,
        evidence=evidence,
        workers=workers,
    )
