"""PolicyEngine: the rule that decided, the decision cache and its invalidation on reload."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.core.errors import PolicyError
from gateway.policy.engine import PolicyEngine, PolicyStore
from tests.conftest import POLICIES


def _copy_policies(tmp_path: Path) -> tuple[Path, Path]:
    model, policy = tmp_path / "model.conf", tmp_path / "policy.csv"
    shutil.copy(POLICIES / "model.conf", model)
    shutil.copy(POLICIES / "policy.csv", policy)
    return model, policy


def test_decision_names_the_rule_and_the_policy_version() -> None:
    engine = PolicyEngine.load(POLICIES / "model.conf", POLICIES / "policy.csv")
    d = engine.decide("alice", ("hr_officer",), "hr", "employee_health", "read", "hr_records")
    assert d.allowed and d.rule == "p, hr_officer, hr, employee_health, read"
    assert d.policy_version == engine.version and len(engine.version) == 12
    denied = engine.decide(
        "bob", ("accountant", "web_editor"), "hr", "employee_health", "read", "hr_records"
    )
    assert not denied.allowed and denied.rule == ""


def test_decisions_are_cached_by_roles_not_by_user_unless_a_g_rule_names_the_user(
    tmp_path: Path,
) -> None:
    model, policy = _copy_policies(tmp_path)
    policy.write_text(policy.read_text() + "g, user:carol, accountant\n")
    hits: list[bool] = []
    engine = PolicyEngine.load(model, policy, on_cache=hits.append)
    for user in ("u1", "u2", "u3"):
        assert engine.decide(user, ("accountant",), "hr", "employee", "read", "hr_records").allowed
    assert hits == [False, True, True]  # three users, one role set: one evaluation
    # carol is mapped by a g rule: her decision depends on her name and is cached apart.
    assert engine.decide("carol", (), "crm", "counterparty", "read", "contracts").allowed
    assert not engine.decide("dave", (), "crm", "counterparty", "read", "contracts").allowed


def test_reload_swaps_in_a_new_policy_and_a_fresh_cache(tmp_path: Path) -> None:
    model, policy = _copy_policies(tmp_path)
    store = PolicyStore(model, policy, cache_size=1000, on_cache=lambda hit: None)
    old = store.engine
    assert not old.decide("x", ("web_editor",), "crm", "counterparty", "read", "contracts").allowed
    policy.write_text(
        policy.read_text() + "p, web_editor, crm, counterparty, read\ng2, web_editor, contracts\n"
    )
    store.reload()
    assert store.engine.version != old.version
    assert store.engine.decide(
        "x", ("web_editor",), "crm", "counterparty", "read", "contracts"
    ).allowed


def test_an_invalid_policy_is_refused_and_the_old_one_stays_in_force(tmp_path: Path) -> None:
    model, policy = _copy_policies(tmp_path)
    store = PolicyStore(model, policy, cache_size=1000, on_cache=lambda hit: None)
    version = store.engine.version
    policy.write_text(policy.read_text() + "p, web_editor, crm\n")
    with pytest.raises(PolicyError, match="4 fields"):
        store.reload()
    assert store.engine.version == version


def test_a_model_with_another_request_shape_is_refused(tmp_path: Path) -> None:
    model, policy = _copy_policies(tmp_path)
    model.write_text(model.read_text().replace("r = sub, sys, cat, act, pur", "r = sub, obj, act"))
    with pytest.raises(PolicyError, match="request_definition"):
        PolicyEngine.load(model, policy)


def test_a_grant_applies_only_within_the_job_functions_purposes() -> None:
    """4.2, 4.3: web_editor may read site visitors for informing them (3.2.3), not for contracts."""
    engine = PolicyEngine.load(POLICIES / "model.conf", POLICIES / "policy.csv")
    assert engine.decide(
        "w", ("web_editor",), "site", "site_visitor", "read", "site_visitors"
    ).allowed
    assert not engine.decide(
        "w", ("web_editor",), "site", "site_visitor", "read", "contracts"
    ).allowed
    assert engine.decide(
        "s", ("sales_manager",), "site", "site_visitor", "read", "contracts"
    ).allowed
