"""The alert rules in deploy/prometheus (9.1.6): valid, unit-tested with the real promtool, and
naming only metrics the gateway exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gateway.config.load import load_config
from gateway.runtime.app import build
from tests.conftest import ROOT, Keys, Upstream, config_dict, write_config

RULES = ROOT / "deploy" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is required (Debian package prometheus); `make test` installs it")
    return path


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


async def test_alert_rules_name_only_metrics_the_gateway_exports(
    tmp_path: Any, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    cfg = load_config(write_config(tmp_path, config_dict(tmp_path, upstream.url), keys))
    proxy_app, admin_app = build(cfg, CollectorRegistry())
    await aiohttp_client(proxy_app)
    admin: TestClient[Any, Any] = await aiohttp_client(admin_app)
    exported = set(
        re.findall(r"^# TYPE (\w+) (\w+)", await (await admin.get("/metrics")).text(), re.M)
    )
    names = {n for n, _ in exported} | {f"{n}_total" for n, kind in exported if kind == "counter"}
    names |= {
        f"{n}_{s}" for n, k in exported if k == "histogram" for s in ("bucket", "count", "sum")
    }
    used = set(re.findall(r"\b(pdgw_\w+)", (RULES / "alerts.yml").read_text()))
    assert used and used <= names, used - names


def test_every_alert_has_a_promtool_case() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", (RULES / "alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (RULES / "alerts_test.yml").read_text(), re.M))
    assert alerts and alerts <= tested, sorted(alerts - tested)
