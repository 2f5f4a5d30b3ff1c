"""Least privilege by job function (4.4, 9.1.7, 10.1.2), end to end through the gateway.

EXPECTED is written from the policy's intent (DIGEST: who needs which category for which
purpose), independently of policies/policy.csv: if a rule is added or dropped there, this fails.
"""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory, Gw, Keys, Upstream, anonymous_refusals, spool_events

# (system, category, action) → the request that exercises it.
REQUESTS = {
    ("hr", "employee", "read"): ("GET", "/hr/employees/1001"),
    ("hr", "employee", "create"): ("POST", "/hr/employees"),
    ("hr", "employee", "update"): ("PUT", "/hr/employees/1001"),
    ("hr", "employee", "delete"): ("DELETE", "/hr/employees/1001"),
    ("hr", "employee", "export"): ("GET", "/hr/export"),
    ("hr", "employee", "block"): ("POST", "/hr/block/1001"),
    ("hr", "employee_health", "read"): ("GET", "/hr/medical/1001"),
    ("hr", "employee_health", "create"): ("POST", "/hr/medical"),
    ("hr", "employee_health", "update"): ("PATCH", "/hr/medical/1001"),
    ("hr", "employee_health", "delete"): ("DELETE", "/hr/medical/1001"),
    ("hr", "employee_health", "block"): ("POST", "/hr/medical-block/1001"),
    ("crm", "counterparty", "read"): ("GET", "/crm/counterparties/c-1"),
    ("crm", "counterparty", "create"): ("POST", "/crm/counterparties"),
    ("crm", "counterparty", "update"): ("PUT", "/crm/counterparties/c-1"),
    ("crm", "counterparty", "delete"): ("DELETE", "/crm/counterparties/c-1"),
    ("crm", "counterparty", "export"): ("GET", "/crm/export"),
    ("crm", "counterparty", "block"): ("POST", "/crm/block/c-1"),
    ("site", "site_visitor", "read"): ("GET", "/site/leads?lead_id=l-1"),
    ("site", "site_visitor", "create"): ("POST", "/site/leads"),
    ("site", "site_visitor", "update"): ("PUT", "/site/leads?lead_id=l-1"),
    ("site", "site_visitor", "delete"): ("DELETE", "/site/leads?lead_id=l-1"),
    ("site", "site_visitor", "export"): ("GET", "/site/export"),
    ("site", "site_visitor", "block"): ("POST", "/site/block"),
}

CRUD = {"read", "create", "update", "delete"}
EXPECTED: dict[str, set[tuple[str, str, str]]] = {
    # Personnel records and the only reader of health data (2.3, 3.2.1).
    "hr_officer": {("hr", "employee", a) for a in CRUD | {"export"}}
    | {("hr", "employee_health", a) for a in ("read", "create", "update")},
    # Salary/tax reporting and contract payments: read only.
    "accountant": {("hr", "employee", "read"), ("crm", "counterparty", "read")},
    "sales_manager": {("crm", "counterparty", a) for a in ("read", "create", "update")}
    | {("site", "site_visitor", "read")},
    "support_agent": {
        ("crm", "counterparty", "read"),
        ("site", "site_visitor", "read"),
        ("site", "site_visitor", "update"),
    },
    "web_editor": {("site", "site_visitor", "read"), ("site", "site_visitor", "delete")},
    # Subject requests: block at once (6.5, 6.6), export on a subject's request (6.3); no reads.
    "dpo": {(s, c, "block") for s, c, _ in REQUESTS}
    | {("crm", "counterparty", "export"), ("site", "site_visitor", "export")},
    # Investigates through the audit trail (9.2.6), not the business systems.
    "security_officer": set(),
}


@pytest.mark.parametrize("role", sorted(EXPECTED))
async def test_job_function_gets_exactly_its_grants(
    role: str, make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url)
    token = keys.token("u-" + role, [role])
    got: set[tuple[str, str, str]] = set()
    for resource, (method, path) in REQUESTS.items():
        resp = await gw.client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        assert resp.status in (200, 403), (resource, resp.status)
        if resp.status == 200:
            got.add(resource)
    assert got == EXPECTED[role]
    # Every one of those requests is an audited access with the right decision (9.1.8).
    events = spool_events(gw.spool_dir)
    assert len(events) == len(REQUESTS)
    for ev in events:
        resource = (ev["system"], ev["category"], ev["action"])
        assert ev["decision"] == ("allow" if resource in EXPECTED[role] else "deny")
        assert ev["user"] == "u-" + role and ev["roles"] == [role]
        if ev["decision"] == "allow":
            assert ev["rule"] == f"p, {role}, {', '.join(resource)}"


def test_nobody_reads_everything_and_only_hr_reads_health_data() -> None:
    readers_of_health = {
        r for r, grants in EXPECTED.items() if ("hr", "employee_health", "read") in grants
    }
    assert readers_of_health == {"hr_officer"}
    reads = {k for k in REQUESTS if k[2] == "read"}
    assert all(not reads <= grants for grants in EXPECTED.values())


async def test_unauthenticated_requests_are_401_and_audited_for_every_category(
    gw: Gw, upstream: Upstream
) -> None:
    for method, path in REQUESTS.values():
        resp = await gw.client.request(method, path)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        body = await resp.json()
        assert body["request_id"] == resp.headers["X-Request-Id"]
    assert upstream.seen == []
    assert spool_events(gw.spool_dir) == []  # nobody to attribute them to: counted (013)
    summaries = await anonymous_refusals(gw)
    assert {s["reason"] for s in summaries} == {"missing_token"}
    assert sum(s["count"] for s in summaries) == len(REQUESTS)
    assert {s["status"] for s in summaries} == {401}


async def test_idp_group_mapped_by_g_rule_acts_as_its_job_function(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url)
    token = keys.token("hanna", ["idp-group-hr"])
    resp = await gw.client.get("/hr/medical/1001", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    (event,) = spool_events(gw.spool_dir)
    assert event["rule"] == "p, hr_officer, hr, employee_health, read"


async def test_route_without_personal_data_is_deny_by_default_and_records_only_refusals(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url)
    allowed = keys.token("s", ["sales_manager"])
    denied = keys.token("h", ["hr_officer"])
    assert (
        await gw.client.get("/crm/catalog", headers={"Authorization": f"Bearer {allowed}"})
    ).status == 200
    assert (
        await gw.client.get("/crm/catalog", headers={"Authorization": f"Bearer {denied}"})
    ).status == 403
    # The allowed read touches no personal data: no record. The refusal is attributed.
    (refused,) = spool_events(gw.spool_dir)
    assert (refused["user"], refused["route"], refused["status"]) == ("h", "crm-catalog", 403)


async def test_a_request_outside_the_job_functions_purposes_is_refused_though_the_category_matches(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    """4.2, 4.3: web_editor reads site visitors to inform them (3.2.3); the same data offered on a
    route serving contracts (3.2.2) is refused. sales_manager works for both purposes."""
    editor = {"Authorization": f"Bearer {keys.token('erin', ['web_editor'])}"}
    sales = {"Authorization": f"Bearer {keys.token('carol', ['sales_manager'])}"}
    assert (await gw.client.get("/site/leads?lead_id=l-1", headers=editor)).status == 200
    assert (await gw.client.get("/site/leads-for-sales", headers=editor)).status == 403
    assert (await gw.client.get("/site/leads-for-sales", headers=sales)).status == 200
    refused = spool_events(gw.spool_dir)[1]
    assert (refused["route"], refused["decision"], refused["category"]) == (
        "site-leads-for-sales",
        "deny",
        "site_visitor",
    )
