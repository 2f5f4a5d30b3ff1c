"""The admin port: metrics in Prometheus text format (checked by promtool), health and readiness."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gateway.config.load import load_config
from gateway.runtime.app import GATEWAY, build
from tests.conftest import Keys, Upstream, config_dict, write_config


async def test_metrics_health_and_readiness(
    tmp_path: Any,
    keys: Keys,
    upstream: Upstream,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    cfg = load_config(write_config(tmp_path, config_dict(tmp_path, upstream.url), keys))
    proxy_app, admin_app = build(cfg, CollectorRegistry())
    proxy = await aiohttp_client(proxy_app)
    admin = await aiohttp_client(admin_app)
    token = keys.token("alice", ["hr_officer"])
    # Read to the end: the request is counted when its response has been streamed, not before.
    allowed = await proxy.get("/hr/employees/1", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status == 200
    await allowed.read()
    refused = await proxy.get("/hr/medical/1")
    assert refused.status == 401
    await refused.read()

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


async def _admin(
    tmp_path: Any, keys: Keys, upstream: Upstream, aiohttp_client: Any, **overrides: Any
) -> tuple[Any, TestClient[Any, Any], CollectorRegistry]:
    registry = CollectorRegistry()
    cfg = load_config(
        write_config(tmp_path, config_dict(tmp_path, upstream.url, **overrides), keys)
    )
    proxy_app, admin_app = build(cfg, registry)
    await aiohttp_client(proxy_app)  # starts the pipeline: the admin API verifies with its keys
    return proxy_app[GATEWAY], await aiohttp_client(admin_app), registry


async def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The admin port's one error shape: JSON, the request id in the body and the header."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert set(body) >= {"error", "message", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == resp.headers["X-Request-Id"] and len(body["request_id"]) == 32
    return body


async def test_unknown_paths_and_methods_get_the_gateways_json_error_with_a_request_id(
    tmp_path: Any, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    _, admin, _ = await _admin(tmp_path, keys, upstream, aiohttp_client)
    body = await _error(await admin.get("/nothing-here"), 404, "not_found")
    assert body["message"] == "not found"
    wrong = await admin.post("/metrics")
    await _error(wrong, 405, "method_not_allowed")
    assert "GET" in wrong.headers["Allow"]
    ok = await admin.get("/healthz")
    assert ok.status == 200 and len(ok.headers["X-Request-Id"]) == 32


async def test_an_unexpected_error_is_a_500_with_a_request_id_and_no_exception_text(
    tmp_path: Any, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    gw, admin, registry = await _admin(
        tmp_path, keys, upstream, aiohttp_client, authz={"policy_admin_roles": ["security_officer"]}
    )

    class Broken:
        async def verify(self, token: str) -> Any:
            raise RuntimeError("jwks cache at /var/secret/keys corrupted")

    gw.serving = dataclasses.replace(gw.serving, verifier=Broken())
    token = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}
    for resp in (
        await admin.put("/admin/policy", json={"policy": "p", "reason": "r"}, headers=token),
        await admin.post("/admin/break-glass", json={"minutes": 5}, headers=token),
    ):
        body = await _error(resp, 500, "internal_error")
        assert "secret" not in await resp.text() and body["message"] == "internal error"
    assert (
        registry.get_sample_value(
            "pdgw_denials_total", {"route": "admin", "reason": "internal_error"}
        )
        == 2
    )


async def test_admin_refusals_use_the_one_error_shape_and_never_echo_an_exception(
    tmp_path: Any, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    gw, admin, _ = await _admin(tmp_path, keys, upstream, aiohttp_client)
    frank = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}
    ok = "INC-9: a reason long enough"

    unauth = await admin.post("/admin/break-glass", json={"minutes": 5, "justification": ok})
    await _error(unauth, 401, "unauthenticated")
    assert unauth.headers["WWW-Authenticate"].startswith('Bearer realm="pd-gateway-admin"')
    await _error(
        await admin.post("/admin/break-glass", data=b"{not json", headers=frank), 400, "bad_request"
    )

    def open_(*args: Any) -> Any:
        raise ValueError("internal detail: /etc/pd-gateway/break-glass.yaml line 3")

    gw.break_glass.open = open_  # a ValueError that is not the duration check: never its text
    resp = await admin.post(
        "/admin/break-glass", json={"minutes": 5, "justification": ok}, headers=frank
    )
    await _error(resp, 500, "internal_error")
    assert "internal detail" not in await resp.text()


async def test_admin_refusals_are_recorded_like_the_proxys(
    tmp_path: Any,
    keys: Keys,
    upstream: Upstream,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    """Refusals of the admin API are recorded like the proxy's: a 403 of the admin API names the employee in the trail; a 401 is counted in
    the anonymous refusal summaries (decision 013)."""
    from tests.conftest import spool_events, spool_records

    data = config_dict(tmp_path, upstream.url, authz={"policy_admin_roles": ["security_officer"]})
    cfg = load_config(write_config(tmp_path, data, keys))
    proxy_app, admin_app = build(cfg, CollectorRegistry())
    proxy = await aiohttp_client(proxy_app)  # opens the spool
    admin = await aiohttp_client(admin_app)
    hr = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    body = {"policy": "p, x, hr, employee, read", "reason": "TICKET-1"}
    forbidden = await admin.put("/admin/policy", json=body, headers=hr)
    assert forbidden.status == 403
    assert (await admin.put("/admin/policy", json=body)).status == 401
    await proxy.app[GATEWAY].anonymous.flush()
    (event,) = spool_events(cfg.audit.spool_dir)
    assert (event["user"], event["route"], event["status"], event["reason"]) == (
        "alice",
        "admin:policy",
        403,
        "no_admin_role",
    )
    assert event["request_id"] == forbidden.headers["X-Request-Id"]
    (summary,) = [r for r in spool_records(cfg.audit.spool_dir) if r["kind"] == "refusal_summary"]
    assert (summary["route"], summary["status"], summary["count"]) == ("admin:policy", 401, 1)


async def test_an_admin_refusal_records_the_routes_template_never_the_subject_in_the_path(
    tmp_path: Any,
    keys: Keys,
    upstream: Upstream,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    """5.3, decision 015: a path of the audit API names a data subject; a refusal of it — counted
    anonymously or recorded with the employee — keeps the route's template, and the subject only
    as a keyed hash."""
    from tests.conftest import spool_records

    key = tmp_path / "subject.key"
    key.write_text("k" * 40)
    data = config_dict(tmp_path, upstream.url, audit={"subject_key_file": str(key)})
    cfg = load_config(write_config(tmp_path, data, keys))
    proxy_app, admin_app = build(cfg, CollectorRegistry())
    proxy = await aiohttp_client(proxy_app)  # opens the spool
    admin = await aiohttp_client(admin_app)
    hr = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    path = "/admin/audit/subjects/subj-Q7Z1/events"
    assert (await admin.get(path)).status == 401
    assert (await admin.get(path, headers=hr)).status == 403
    assert (await admin.get(path.replace("/events", "/report"), headers=hr)).status == 403
    await proxy.app[GATEWAY].anonymous.flush()
    records = spool_records(cfg.audit.spool_dir)
    (summary,) = [r for r in records if r["kind"] == "refusal_summary"]
    assert summary["route"] == "admin:audit/subjects/{subject}/events"
    denied = [r for r in records if r["kind"] == "access"]
    assert [r["path"] for r in denied] == [
        "/admin/audit/subjects/{subject}/events",
        "/admin/audit/subjects/{subject}/report",
    ]
    assert all(r["subject_ids"][0].startswith("h:") for r in denied)
    segments = list((tmp_path / "spool").glob("*.jsonl"))
    assert segments and all("subj-Q7Z1" not in p.read_text() for p in segments)
