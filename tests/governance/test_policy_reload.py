"""Hot reload of the policy, and every permission change recorded once (9.2.7)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from gateway.audit.store.factory import open_store
from gateway.runtime.app import GATEWAY
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import POLICIES, GatewayFactory, Keys, Upstream, run_cli, spool_records
from tests.process import run_gateway
from tests.stores import count, fresh_database, store_config, store_section, wait_for


def copy_policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(POLICIES, d, dirs_exist_ok=True)
    return d


def authz(policies: Path, watch: float = 0, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(policies / "model.conf"),
        "policy": str(policies / "policy.csv"),
        "watch_interval_seconds": watch,
        **extra,
    }


def edit(policy: Path, add: str = "", remove: str = "") -> None:
    """Replace the file the way a deploy does: write a new one, rename it over the old."""
    lines = [line for line in policy.read_text().splitlines() if line != remove]
    tmp = policy.with_suffix(".new")
    tmp.write_text("\n".join(lines) + "\n" + (add + "\n" if add else ""))
    tmp.replace(policy)


async def test_a_changed_policy_file_applies_to_requests_after_the_switch_without_failures(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    policies = copy_policies(tmp_path)
    gw = await make_gateway(
        upstream.url,
        authz=authz(policies, 0.05),
    )
    gateway = gw.client.app[GATEWAY]  # type: ignore[index]
    carol = {"Authorization": f"Bearer {keys.token('carol', [])}"}
    alice = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    old_version = gateway.policies.engine.version
    assert (await gw.client.get("/hr/employees/1", headers=carol)).status == 403

    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:  # requests keep flowing while the policy changes under them
        while not stop.is_set():
            r = await gw.client.get("/hr/employees/1", headers=alice)
            statuses.append(r.status)

    loader = asyncio.ensure_future(load())
    edit(policies / "policy.csv", add="g, user:carol, accountant")
    await asyncio.to_thread(
        wait_for, lambda: gateway.policies.engine.version != old_version, 10, "reload"
    )
    await asyncio.sleep(0.1)
    stop.set()
    await loader
    assert statuses and set(statuses) == {200}  # nothing failed during the switch

    r = await gw.client.get("/hr/employees/1", headers=carol)
    assert r.status == 200  # the new policy decides requests after the switch
    changes = [rec for rec in spool_records(gw.spool_dir) if rec["kind"] == "permission_change"]
    assert [(c["change_kind"], c["user"], c["role"], c["rule_after"]) for c in changes] == [
        ("role_assigned", "carol", "accountant", "g, user:carol, accountant")
    ]
    assert changes[0]["policy_version_before"] == old_version
    assert changes[0]["source"] == "file" and changes[0]["actor"].startswith("file:")
    last = [rec for rec in spool_records(gw.spool_dir) if rec["kind"] == "access"][-1]
    assert (
        last["policy_version"]
        == gateway.policies.engine.version
        == changes[0]["policy_version_after"]
    )


async def test_an_invalid_policy_is_refused_and_the_old_one_stays_in_force(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    policies = copy_policies(tmp_path)
    gw = await make_gateway(
        upstream.url,
        authz=authz(policies, 0),
    )
    gateway = gw.client.app[GATEWAY]  # type: ignore[index]
    version = gateway.policies.engine.version
    edit(policies / "policy.csv", add="p, hr_officer, hr")
    assert await gateway.rights.reload_policy(actor="test", source="file", reason="test") is False
    assert gateway.policies.engine.version == version
    assert gw.metric("pdgw_policy_reloads_total", {"result": "refused"}) == 1
    assert not [r for r in spool_records(gw.spool_dir) if r["kind"] == "permission_change"]


async def test_a_policy_change_is_refused_while_it_cannot_be_recorded(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    policies = copy_policies(tmp_path)
    gw = await make_gateway(
        upstream.url,
        authz=authz(policies, 0),
        audit={"max_spool_bytes": 64 * 1024},  # no store: the spool fills up and refuses
    )
    gateway = gw.client.app[GATEWAY]  # type: ignore[index]
    alice = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    while (await gw.client.get("/hr/employees/1", headers=alice)).status != 503:
        pass
    version = gateway.policies.engine.version
    edit(policies / "policy.csv", add="g, user:carol, accountant")
    assert await gateway.rights.reload_policy(actor="test", source="file", reason="test") is False
    assert gateway.policies.engine.version == version  # no silent change of access rights


async def test_replicas_reloading_the_same_change_record_it_once(
    ch_server: ClickHouseServer, tmp_path: Path, keys: Keys, upstream: Upstream, chdb_dir: Path
) -> None:
    """Three gateway processes, one policy directory, one store: one record per change."""
    policies = copy_policies(tmp_path)
    database = fresh_database()
    section = store_section("clickhouse", database, chdb_dir=chdb_dir, server=ch_server)
    authz_cfg = authz(policies, 0.1)
    store = open_store(store_config(section), apply_schema=True)
    dirs = [tmp_path / f"replica{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    with (
        run_gateway(
            dirs[0], keys, upstream.url, store=section, authz=authz_cfg, instance_id="gw-a"
        ) as a,
        run_gateway(
            dirs[1], keys, upstream.url, store=section, authz=authz_cfg, instance_id="gw-b"
        ) as b,
        run_gateway(
            dirs[2], keys, upstream.url, store=section, authz=authz_cfg, instance_id="gw-c"
        ) as c,
    ):
        edit(
            policies / "policy.csv",
            add="g, user:carol, accountant",
            remove="p, web_editor, site, site_visitor, delete",
        )
        carol = {"Authorization": f"Bearer {keys.token('carol', [])}"}

        async def allowed(url: str) -> bool:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"{url}/hr/employees/1", headers=carol) as r,
            ):
                return r.status == 200

        for gp in (a, b, c):
            for _ in range(100):
                if await allowed(gp.url):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{gp.url} never applied the change")
        await asyncio.to_thread(
            wait_for, lambda: count(store, "permission_change_records") >= 12, 30, "all shipped"
        )
        await asyncio.sleep(1.0)  # anything extra would show up now
    # Every process's record is kept (each is part of its instance's chain: each replica's
    # supervisor and the worker that serves, decision 030) ...
    assert count(store, "permission_change_records") == 12
    # ... and an auditor's plain count() over permission_changes counts each change once.
    assert count(store, "permission_changes") == 2
    rows = store.select(
        f"SELECT kind, user, role, rule_before, rule_after, instances FROM {database}.permission_changes ORDER BY kind"
    )
    assert [(r["kind"], r["user"], r["role"], r["rule_before"], r["rule_after"]) for r in rows] == [
        ("role_assigned", "carol", "accountant", "", "g, user:carol, accountant"),
        ("rule_removed", "", "web_editor", "p, web_editor, site, site_visitor, delete", ""),
    ]
    assert all(len(r["instances"]) == 6 for r in rows)
    # Each replica's chain is whole, and consistent with what it signed.
    from gateway.audit.checkpoint import load_public_keys
    from gateway.audit.verify import verify_store

    keyring = load_public_keys(d / "checkpoint-key.pub" for d in dirs)
    await asyncio.to_thread(
        wait_for,
        lambda: count(store, "chain_checkpoints") >= 6,
        30,
        "start-up checkpoints shipped",
    )
    report = verify_store(store, keyring)
    assert report.ok, report.problems
    assert sorted(i.instance for i in report.instances) == [
        f"gw-{r}{w}" for r in "abc" for w in ("", "-w0")
    ]
    store.close()


async def test_a_changed_role_set_in_tokens_is_recorded_once_and_survives_a_restart(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url)

    async def as_alice(roles: list[str], iat: int) -> int:
        token = keys.token("alice", roles, iat=iat)
        return (
            await gw.client.get("/hr/employees/1", headers={"Authorization": f"Bearer {token}"})
        ).status

    def changes() -> list[dict[str, object]]:
        return [r for r in spool_records(gw.spool_dir) if r["kind"] == "permission_change"]

    assert await as_alice(["hr_officer"], 1_790_000_000) == 200
    assert changes() == []  # first sight: the baseline, nothing known to have changed
    assert await as_alice(["hr_officer", "dpo"], 1_790_000_100) == 200
    assert await as_alice(["hr_officer", "dpo"], 1_790_000_100) == 200  # same set: no new record
    (change,) = changes()
    assert (
        change["change_kind"],
        change["user"],
        change["rule_before"],
        change["rule_after"],
        change["source"],
    ) == ("idp_roles_changed", "alice", "roles: hr_officer", "roles: dpo,hr_officer", "idp")

    await gw.client.close()  # a restart: the baseline is kept in the spool directory
    gw2 = await make_gateway(upstream.url)
    token = keys.token("alice", ["dpo"], iat=1_790_000_200)
    assert (
        await gw2.client.get("/hr/employees/1", headers={"Authorization": f"Bearer {token}"})
    ).status == 403
    later = [r for r in spool_records(gw2.spool_dir) if r["kind"] == "permission_change"]
    assert [(c["rule_before"], c["rule_after"]) for c in later] == [
        ("roles: hr_officer", "roles: dpo,hr_officer"),
        ("roles: dpo,hr_officer", "roles: dpo"),
    ]


async def test_policy_put_through_the_admin_api_is_authorised_reasoned_checked_and_recorded(
    tmp_path: Path, keys: Keys, upstream: Upstream, aiohttp_client: Any
) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.config.load import load_config
    from gateway.runtime.app import build
    from tests.conftest import config_dict, write_config

    policies = copy_policies(tmp_path)
    data = config_dict(
        tmp_path,
        upstream.url,
        authz=authz(policies, policy_admin_roles=["security_officer"]),
    )
    proxy_app, admin_app = build(
        load_config(write_config(tmp_path, data, keys)), CollectorRegistry()
    )
    proxy = await aiohttp_client(proxy_app)
    admin = await aiohttp_client(admin_app)
    new_text = (policies / "policy.csv").read_text() + "g, user:carol, accountant\n"
    sec = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}

    r = await admin.put("/admin/policy", json={"policy": new_text, "reason": "T-1"})
    assert r.status == 401
    hr = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    assert (
        await admin.put("/admin/policy", json={"policy": new_text, "reason": "T-1"}, headers=hr)
    ).status == 403
    r = await admin.put("/admin/policy", json={"policy": new_text}, headers=sec)
    assert r.status == 400 and "reason" in (await r.json())["message"]
    r = await admin.put(
        "/admin/policy",
        json={"policy": new_text + "p, carol, hr, *, read\n", "reason": "T-1"},
        headers=sec,
    )
    assert r.status == 400
    assert any("wildcards" in p for p in (await r.json())["problems"])

    carol = {"Authorization": f"Bearer {keys.token('carol', [])}"}
    assert (await proxy.get("/hr/employees/1", headers=carol)).status == 403
    r = await admin.put(
        "/admin/policy",
        json={"policy": new_text, "reason": "T-42 carol joins finance"},
        headers=sec,
    )
    assert r.status == 200, await r.text()
    assert (await proxy.get("/hr/employees/1", headers=carol)).status == 200
    assert (policies / "policy.csv").read_text() == new_text  # the file says what is in force
    changes = [
        rec for rec in spool_records(tmp_path / "spool") if rec["kind"] == "permission_change"
    ]
    assert [(c["actor"], c["source"], c["reason"], c["rule_after"]) for c in changes] == [
        ("frank", "admin_api", "T-42 carol joins finance", "g, user:carol, accountant")
    ]


async def test_policy_api_is_off_unless_admin_roles_are_configured(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.config.load import load_config
    from gateway.runtime.app import build
    from tests.conftest import config_dict, write_config

    _, admin_app = build(
        load_config(write_config(tmp_path, config_dict(tmp_path, upstream.url), keys)),
        CollectorRegistry(),
    )
    admin = await aiohttp_client(admin_app)
    sec = {"Authorization": f"Bearer {keys.token('frank', ['security_officer'])}"}
    assert (
        await admin.put("/admin/policy", json={"policy": "x", "reason": "y"}, headers=sec)
    ).status == 404


async def test_a_time_bound_grant_lapses_by_itself_and_the_lapse_is_recorded(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    import datetime as dt

    policies = copy_policies(tmp_path)
    edit(policies / "policy.csv", add="g, user:ivan, accountant")  # a contractor, for a while
    expiry = policies / "expiry.yaml"
    expiry.write_text('"g, user:ivan, accountant": "2030-01-01T00:00:00Z"\n')
    assert run_cli("policy", "check", "--policies", str(policies)).returncode == 0
    # The end is set after the (slow, separate-process) check, so a loaded machine cannot make
    # the grant lapse before the gateway starts.
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    expiry.write_text(f'"g, user:ivan, accountant": "{ends.isoformat()}"\n')
    gw = await make_gateway(upstream.url, authz=authz(policies, 0.05))
    ivan = {"Authorization": f"Bearer {keys.token('ivan', [])}"}
    assert (await gw.client.get("/hr/employees/1", headers=ivan)).status == 200
    await asyncio.sleep(max(0.0, (ends - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
    assert (await gw.client.get("/hr/employees/1", headers=ivan)).status == 403
    (change,) = [r for r in spool_records(gw.spool_dir) if r["kind"] == "permission_change"]
    assert (change["change_kind"], change["user"], change["role"], change["source"]) == (
        "role_unassigned",
        "ivan",
        "accountant",
        "expiry",
    )
    assert (policies / "policy.csv").read_text().count(
        "g, user:ivan, accountant"
    ) == 1  # file untouched


def test_policy_check_refuses_an_expiry_for_a_rule_that_does_not_exist(tmp_path: Path) -> None:
    policies = copy_policies(tmp_path)
    (policies / "expiry.yaml").write_text('"g, nobody, accountant": "2030-01-01T00:00:00Z"\n')
    out = run_cli("policy", "check", "--policies", str(policies))
    assert (
        out.returncode == 1 and "'g, nobody, accountant' is not a rule of policy.csv" in out.stderr
    )


async def test_a_policy_file_that_fails_policy_check_is_not_put_in_force(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    """It parses, but grants health data to accountants (2.3): the reload is refused like in the API."""
    policies = copy_policies(tmp_path)
    gw = await make_gateway(upstream.url, authz=authz(policies, 0))
    gateway = gw.client.app[GATEWAY]  # type: ignore[index]
    version = gateway.policies.engine.version
    edit(policies / "policy.csv", add="p, accountant, hr, employee_health, read")
    assert await gateway.rights.reload_policy(actor="test", source="file", reason="test") is False
    assert gateway.policies.engine.version == version
    bob = {"Authorization": f"Bearer {keys.token('bob', ['accountant'])}"}
    assert (await gw.client.get("/hr/medical/1", headers=bob)).status == 403


async def test_sighup_reloads_the_policy_in_a_running_gateway(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    import signal

    from tests.process import run_gateway

    policies = copy_policies(tmp_path)
    carol = {"Authorization": f"Bearer {keys.token('carol', [])}"}
    with run_gateway(tmp_path, keys, upstream.url, authz=authz(policies, 0)) as gp:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gp.url}/hr/employees/1", headers=carol) as r:
                assert r.status == 403
            edit(policies / "policy.csv", add="g, user:carol, accountant")
            await asyncio.sleep(0.2)  # no watcher: nothing changes until the signal
            async with s.get(f"{gp.url}/hr/employees/1", headers=carol) as r:
                assert r.status == 403
            gp.proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                async with s.get(f"{gp.url}/hr/employees/1", headers=carol) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("SIGHUP did not reload the policy")
    # The supervisor and the worker that serves each record the change (one change id: the
    # store keeps it once), before it is in force in each (9.2.7).
    for spool in (gp.spool, gp.serving_spool()):
        changes = [c for c in spool_records(spool) if c["kind"] == "permission_change"]
        assert [(c["actor"], c["rule_after"]) for c in changes] == [
            ("signal:SIGHUP", "g, user:carol, accountant")
        ]


async def test_two_reloads_of_one_edit_at_once_record_it_once(
    make_gateway: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """A worker's file watcher and the supervisor's SIGHUP can reload the same edit together:
    the second waits for the first and finds nothing left to change (9.2.7: one record per
    change and process)."""
    policies = copy_policies(tmp_path)
    gw = await make_gateway(upstream.url, authz=authz(policies))
    gateway = gw.client.app[GATEWAY]  # type: ignore[index]
    edit(policies / "policy.csv", add="g, user:carol, accountant")
    results = await asyncio.gather(
        *(
            gateway.rights.reload_policy(actor=actor, source="file", reason="test")
            for actor in ("file:watcher", "signal:SIGHUP")
        )
    )
    assert results == [True, True]
    changes = [rec for rec in spool_records(gw.spool_dir) if rec["kind"] == "permission_change"]
    assert [(c["change_kind"], c["user"], c["actor"]) for c in changes] == [
        ("role_assigned", "carol", "file:watcher")
    ]
