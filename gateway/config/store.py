"""The `store` section: where the spool is shipped — `embedded` (chdb in the gateway's
process) or `clickhouse` (servers, native protocol, with failover). Absent: no store."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config.model import Secret, StoreConfig
from gateway.config.reader import Section, at_least, identifier, one_of, positive

D = StoreConfig  # the defaults


def parse_store(top: Section) -> StoreConfig | None:
    st = top.optional("store")
    if st is None:
        return None
    problems = st.problems
    kind = st.get("kind", str, ..., one_of(("embedded", "clickhouse")))
    hosts: list[tuple[str, int]] = []
    for i, h in enumerate(st.get("hosts", list, [])):
        host, _, port = str(h).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.add(f"{st.key('hosts')}.{i}", f"{h!r} is not host:port")
        else:
            hosts.append((host, int(port)))
    path = st.path_of("path", None)
    if kind == "embedded" and path is None:
        problems.add(st.key("path"), "is required for kind embedded (the chdb data directory)")
    if kind == "clickhouse" and not hosts:
        problems.add(
            st.key("hosts"), "is required for kind clickhouse (host:port, native protocol)"
        )
    cfg = StoreConfig(
        kind=kind or "embedded",
        database=st.get("database", str, D.database, identifier),
        path=path,
        hosts=tuple(hosts),
        user=st.get("user", str, D.user),
        password=Secret(_password(st)),
        secure=st.get("secure", bool, D.secure),
        ca_file=st.file("ca_file", st.path_of("ca_file", None)),
        connect_timeout_seconds=st.get(
            "connect_timeout_seconds", float, D.connect_timeout_seconds, positive
        ),
        send_receive_timeout_seconds=st.get(
            "send_receive_timeout_seconds", float, D.send_receive_timeout_seconds, positive
        ),
        cluster=st.get("cluster", str, None, identifier),
        apply_schema=st.get("apply_schema", bool, D.apply_schema),
        batch_max_rows=st.get("batch_max_rows", int, D.batch_max_rows, at_least(1)),
        batch_max_age_ms=st.get("batch_max_age_ms", float, D.batch_max_age_ms, positive),
        retry_max_backoff_seconds=st.get(
            "retry_max_backoff_seconds", float, D.retry_max_backoff_seconds, positive
        ),
    )
    st.finish()
    return cfg


def _password(st: Section) -> str:
    """From a file or an environment variable; never in the config itself."""
    password_file = st.get("password_file", str, None)
    password_env = st.get("password_env", str, None)
    if password_file is not None and password_env is not None:
        st.problems.add(st.key("password_file"), "give password_file or password_env, not both")
    elif password_file is not None:
        path = st.file("password_file", st.resolve(password_file)) or Path()
        try:
            if path.is_file():
                return path.read_text().strip()
        except OSError as e:
            st.problems.add(st.key("password_file"), f"cannot read: {e.strerror}")
    elif password_env is not None:
        if password_env not in os.environ:
            st.problems.add(
                st.key("password_env"), f"environment variable {password_env} is not set"
            )
        return os.environ.get(password_env, "")
    return ""
