"""`make run` (deploy/local/run.sh) as a process: a signal stops every child (gateway — its
supervisor and worker —, upstream, demo OpenID provider), none is orphaned."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.testing.chserver import free_port
from tests.conftest import ROOT, demo_config_dict

pytestmark = pytest.mark.slow
LOCAL = ROOT / "deploy" / "local"


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "run.sh ended early"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def _default_signals() -> None:
    """In the child, before exec: the dispositions a user's shell gives `make run`. A test
    process started in the background (`nohup make test &`) ignores SIGINT, and an ignored signal
    survives exec — bash could not even trap it then."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "inherited"),
    [
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGINT, signal.SIG_DFL),
        # As under `nohup make test &`: the test process itself ignores SIGINT.
        (signal.SIGINT, signal.SIG_IGN),
    ],
    ids=["SIGTERM", "SIGINT", "SIGINT-ignored-by-the-test-process"],
)
def test_a_signal_to_the_demo_stops_the_gateway_and_the_upstream(
    tmp_path: Path, sig: int, inherited: Any
) -> None:
    upstream_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    data = demo_config_dict()
    data["audit"]["spool_dir"] = str(tmp_path / "spool")
    del data["store"]  # chdb is not what this is about, and it is slow to load
    del data["oidc"]  # browser login: tests/test_browser_*.py; here only the demo provider runs
    del data["console"]  # it needs the browser login (tests/web/console/)
    data["listen"]["proxy"]["port"] = proxy_port
    data["listen"]["admin"]["port"] = admin_port
    data["upstreams"] = {k: f"http://127.0.0.1:{upstream_port}" for k in data["upstreams"]}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    provider = json.loads((LOCAL / "oidc-provider.DEMO-ONLY.json").read_text())
    provider_port = free_port()
    provider.update(issuer=f"http://127.0.0.1:{provider_port}", port=provider_port)
    (tmp_path / "provider.json").write_text(json.dumps(provider))
    with_provider = (ROOT / "deploy" / "oidc-demo" / "node_modules" / "oidc-provider").is_dir()
    env = {
        **os.environ,
        "PD_GATEWAY_CONFIG": str(config),
        "DEMO_UPSTREAM_PORT": str(upstream_port),
        "DEMO_OIDC_CONFIG": str(tmp_path / "provider.json"),
    }
    before = signal.signal(signal.SIGINT, inherited)
    try:
        proc = subprocess.Popen(
            ["bash", str(LOCAL / "run.sh")],
            env=env,
            stdout=subprocess.DEVNULL,
            cwd=tmp_path,
            preexec_fn=_default_signals,
            start_new_session=True,  # its own process group: killed whole in `finally`
        )
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        _ready(f"http://127.0.0.1:{admin_port}/readyz", proc)
        _ready(f"http://127.0.0.1:{upstream_port}/crm/catalog", proc)
        if with_provider:
            _ready(f"http://127.0.0.1:{provider_port}/.well-known/openid-configuration", proc)
        children = _children(proc.pid)
        assert len(children) == (3 if with_provider else 2), children
        # The gateway's worker (decision 030), the grandchild that serves the requests.
        workers = {w for pid in children for w in _children(pid)} - children
        assert len(workers) >= 1
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        assert code == 128 + sig
        assert not [pid for pid in children | workers if _alive(pid)]
    finally:
        # Whatever happened: nothing of the demo outlives the test (a leftover would hold its
        # ports and fail later tests, or leak sockets into them).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
