"""Break-glass access: bounded, justified, only where the policy allows it, recorded (9.2.7),
every access under it flagged in its event and counted for alerting (9.1.6)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.config.load import load_config
from gateway.runtime.app import build
from tests.conftest import Keys, Upstream, config_dict, spool_events, spool_records, write_config


async def _apps(
    tmp_path: Path, upstream: Upstream, keys: Keys, aiohttp_client: Any
) -> tuple[Any, Any, CollectorRegistry]:
    registry = CollectorRegistry()
    proxy_app, admin_app = build(
        load_config(write_config(tmp_path, config_dict(tmp_path, upstream.url), keys)), registry
    )
    return await aiohttp_client(proxy_app), await aiohttp_client(admin_app), registry


async def test_break_glass_grants_bounded_flagged_access_and_records_start_and_end(
    tmp_path: Path, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    proxy, admin, registry = await _apps(tmp_path, upstream, keys, aiohttp_client)
    frank = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}
    assert (
        await proxy.get("/hr/employees/1001", headers=frank)
    ).status == 403  # no standing access

    r = await admin.post(
        "/admin/break-glass",
        json={"minutes": 0.02, "justification": "INC-7: leaked payroll file"},
        headers=frank,
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert ["hr", "employee", "read", "hr_records"] in body["grants"]

    assert (await proxy.get("/hr/employees/1001", headers=frank)).status == 200
    assert (
        await proxy.get("/hr/medical/1001", headers=frank)
    ).status == 403  # only the listed grants
    assert (await proxy.delete("/hr/employees/1001", headers=frank)).status == 403
    allowed = [e for e in spool_events(tmp_path / "spool") if e["decision"] == "allow"]
    assert [(e["reason"], e["rule"]) for e in allowed] == [
        ("break_glass", f"break-glass:{body['session']}")
    ]
    assert (
        registry.get_sample_value("pdgw_break_glass_accesses_total", {"route": "hr-employees"}) == 1
    )
    assert registry.get_sample_value("pdgw_break_glass_active") == 1

    deadline = time.time() + 5
    while time.time() < deadline and registry.get_sample_value("pdgw_break_glass_active") != 0:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.6)  # the end is recorded by the reaper
    assert (
        await proxy.get("/hr/employees/1001", headers=frank)
    ).status == 403  # it ended by itself
    changes = [c for c in spool_records(tmp_path / "spool") if c["kind"] == "permission_change"]
    assert [(c["change_kind"], c["user"], c["source"]) for c in changes] == [
        ("break_glass_started", "frank", "break_glass"),
        ("break_glass_ended", "frank", "break_glass"),
    ]
    assert changes[0]["reason"] == "INC-7: leaked payroll file"


async def test_break_glass_is_refused_without_policy_allowance_justification_or_within_bounds(
    tmp_path: Path, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    _, admin, _ = await _apps(tmp_path, upstream, keys, aiohttp_client)
    frank = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}
    dave = {"Authorization": f"Bearer {keys.token('dave', ['support_agent'])}"}
    ok = "INC-8: customer data request"
    assert (
        await admin.post("/admin/break-glass", json={"minutes": 5, "justification": ok})
    ).status == 401
    assert (
        await admin.post(
            "/admin/break-glass", json={"minutes": 5, "justification": ok}, headers=dave
        )
    ).status == 403
    assert (
        await admin.post(
            "/admin/break-glass", json={"minutes": 5, "justification": "x"}, headers=frank
        )
    ).status == 400
    r = await admin.post(
        "/admin/break-glass", json={"minutes": 31, "justification": ok}, headers=frank
    )
    assert r.status == 400 and "30 minutes" in (await r.json())["message"]
    assert not [c for c in spool_records(tmp_path / "spool") if c["kind"] == "permission_change"]
