"""The admin port: metrics in Prometheus text format (checked by promtool), health and readiness."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gateway import config
from gateway.app import GATEWAY, build
from tests.conftest import Keys, Upstream, config_dict, write_config


async def test_metrics_health_and_readiness(
    tmp_path: Any,
    keys: Keys,
    upstream: Upstream,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    cfg = config.load(write_config(tmp_path, config_dict(tmp_path, upstream.url), keys))
    proxy_app, admin_app = build(cfg, CollectorRegistry())
    proxy = await aiohttp_client(proxy_app)
    admin = await aiohttp_client(admin_app)
    token = keys.token("alice", ["hr_officer"])
    await proxy.get("/hr/employees/1", headers={"Authorization": f"Bearer {token}"})
    await proxy.get("/hr/medical/1")

    assert (await admin.get("/healthz")).status == 200
    ready = await admin.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {
        "policy_loaded": True,
        "spool_writable": True,
        "jwks_loaded": True,
    }

    text = await (await admin.get("/metrics")).text()
    gw = proxy_app[GATEWAY]
    version = gw.policies.engine.version
    assert 'pdgw_requests_total{decision="allow",route="hr-employees",status="200"} 1.0' in text
    assert 'pdgw_denials_total{reason="missing_token",route="hr-medical"} 1.0' in text
    assert f'pdgw_policy_info{{version="{version}"}} 1.0' in text
    assert (
        "pdgw_spool_fsync_seconds_count" in text and "pdgw_gateway_overhead_seconds_bucket" in text
    )
    assert "pdgw_spool_healthy 1.0" in text

    # The spool stops: readiness follows, so a balancer stops sending personal-data requests.
    gw.spool.healthy = False
    assert (await admin.get("/readyz")).status == 503

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian package prometheus); .ci/run installs it")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
