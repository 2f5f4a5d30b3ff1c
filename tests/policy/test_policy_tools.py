"""`pd-gateway policy check|test|explain|diff|roster` on good and bad inputs (4.4, 9.2.3, 9.3.12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import POLICIES, ROOT, run_cli

DEMO = ROOT / "deploy" / "local" / "gateway.yaml"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(POLICIES, d)
    return d


def test_shipped_policies_pass_check_against_the_demo_routes() -> None:
    out = run_cli("policy", "check", "--config", str(DEMO))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("p, sales_manager, crm, *, read", "wildcards grant everything"),
        ("p, sales_manager, crm, biometrics, read", "unknown category 'biometrics'"),
        ("p, sales_manager, crm, counterparty, copy", "unknown action 'copy'"),
        ("g, dave, auditor", "role 'auditor' has no grant"),
        ("p, accountant, hr, employee_health, read", "employee_health is a special category (2.3)"),
        ("p, accountant, crm, counterparty", "expected 'p, role, system, category, action'"),
        ("p, hr_officer, hr, employee, read", "duplicate rule hr_officer, hr, employee, read"),
        ("p, web_editor, payroll, employee, read", "no route serves payroll/employee"),
    ],
)
def test_check_names_file_and_line_of_each_problem(policies: Path, line: str, message: str) -> None:
    policy = policies / "policy.csv"
    lines = policy.read_text().splitlines()
    policy.write_text("\n".join([*lines, line]) + "\n")
    out = run_cli("policy", "check", "--policies", str(policies), "--config", str(DEMO))
    assert out.returncode == 1
    assert f"{policy}:{len(lines) + 1}: " in out.stderr and message in out.stderr, out.stderr


def test_check_refuses_a_role_that_reads_every_category(policies: Path) -> None:
    policy = policies / "policy.csv"
    extra = ["p, accountant, site, site_visitor, read", "p, accountant, hr, employee_health, read"]
    policy.write_text(policy.read_text() + "\n".join(extra) + "\n")
    (policies / "lint.yaml").write_text("special_categories: {}\n")
    out = run_cli("policy", "check", "--policies", str(policies))
    assert out.returncode == 1 and "role 'accountant' reads every category" in out.stderr


def test_shipped_policy_test_suite_passes_and_covers_every_job_function() -> None:
    out = run_cli("policy", "test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(" passed, 0 failed")
    files = {p.stem for p in (POLICIES / "tests").glob("*.yaml")}
    assert {
        "hr_officer",
        "accountant",
        "sales_manager",
        "support_agent",
        "web_editor",
        "security_officer",
        "dpo",
    } <= files


def test_a_failing_policy_case_fails_the_run(policies: Path) -> None:
    (policies / "tests" / "wrong.yaml").write_text(
        "- {name: accountant reads health data, roles: [accountant], system: hr, purpose: hr_records, category: employee_health, action: read, expect: allow}\n"
    )
    out = run_cli("policy", "test", "--policies", str(policies))
    assert out.returncode == 1
    assert "FAIL wrong.yaml: accountant reads health data — expected allow, got deny" in out.stdout


def test_explain_shows_route_action_decision_and_rule() -> None:
    out = run_cli(
        "policy",
        "explain",
        "--config",
        str(DEMO),
        "--user",
        "alice",
        "--roles",
        "hr_officer",
        "--method",
        "GET",
        "--path",
        "/hr/medical/1001",
    )
    assert out.returncode == 0, out.stderr
    assert "route     hr-medical" in out.stdout and "action read" in out.stdout
    assert "subjects  1001" in out.stdout and "decision  ALLOW" in out.stdout
    assert "rule      p, hr_officer, hr, employee_health, read" in out.stdout
    denied = run_cli(
        "policy",
        "explain",
        "--config",
        str(DEMO),
        "--user",
        "bob",
        "--roles",
        "accountant",
        "--path",
        "/hr/medical/1001",
    )
    assert "decision  DENY" in denied.stdout
    refused = run_cli(
        "policy",
        "explain",
        "--config",
        str(DEMO),
        "--user",
        "bob",
        "--path",
        "/hr/employees/../medical/1",
    )
    assert "refused before routing (400): dot_segment" in refused.stdout


def test_diff_that_maps_a_user_to_a_role_shows_exactly_that_gain(policies: Path) -> None:
    new = policies / "new.csv"
    new.write_text((policies / "policy.csv").read_text() + "g, user:carol, accountant\n")
    args = (
        "policy",
        "diff",
        str(policies / "policy.csv"),
        str(new),
        "--model",
        str(policies / "model.conf"),
    )
    delta = json.loads(run_cli(*args, "--json", "--config", str(DEMO)).stdout)
    # accountant's grants, within the purposes the routes serve them for (4.2)
    assert delta == {
        "gains": [
            ["user:carol", "crm", "counterparty", "read", "contracts"],
            ["user:carol", "hr", "employee", "read", "hr_records"],
        ],
        "losses": [],
    }
    # Without routes to narrow it, every purpose accountant works for.
    everything = json.loads(run_cli(*args, "--json").stdout)
    assert len(everything["gains"]) == 4 and all(g[0] == "user:carol" for g in everything["gains"])


def test_diff_shows_losses_of_a_removed_grant_for_the_role_and_its_members(policies: Path) -> None:
    old = policies / "policy.csv"
    new = policies / "new.csv"
    removed = "p, sales_manager, site, site_visitor, read"
    kept = [line for line in old.read_text().splitlines() if line != removed]
    new.write_text("\n".join(kept) + "\n")
    out = run_cli(
        "policy",
        "diff",
        str(old),
        str(new),
        "--model",
        str(policies / "model.conf"),
        "--config",
        str(DEMO),
    )
    assert out.stdout.splitlines() == [
        "- idp-group-sales loses read on site/site_visitor for site_visitors",
        "- sales_manager loses read on site/site_visitor for site_visitors",
    ]


def test_roster_lists_who_may_access_each_category_for_which_purpose() -> None:
    out = run_cli("policy", "roster", "--format", "json", "--config", str(DEMO))
    rows = {
        (r["system"], r["category"], r["action"], r["purpose"]): r for r in json.loads(out.stdout)
    }
    assert rows[("hr", "employee_health", "read", "hr_records")]["job_functions"] == ["hr_officer"]
    assert rows[("hr", "employee_health", "read", "hr_records")]["mapped_members"] == [
        "idp-group-hr"
    ]
    assert rows[("crm", "counterparty", "read", "contracts")]["job_functions"] == [
        "accountant",
        "sales_manager",
        "support_agent",
    ]
    assert {k[3] for k in rows} == {"hr_records", "contracts", "site_visitors"}
    assert all(
        (s, c, p)
        in {
            ("hr", "employee", "hr_records"),
            ("hr", "employee_health", "hr_records"),
            ("crm", "counterparty", "contracts"),
            ("crm", "none", "contracts"),
            ("site", "site_visitor", "site_visitors"),
        }
        for s, c, _, p in rows
    )
    csv_out = run_cli("policy", "roster", "--format", "csv")
    assert (
        csv_out.stdout.splitlines()[0]
        == "system,category,action,purpose,job_functions,mapped_members"
    )


@pytest.mark.parametrize(
    "command",
    [("diff", "missing-old.csv", "missing-new.csv"), ("roster", "--policies", "no-such-dir")],
)
def test_commands_name_a_missing_policy_file_and_fail(command: tuple[str, ...]) -> None:
    out = run_cli("policy", *command)
    assert out.returncode == 2
    assert "cannot read policy file" in out.stderr
    assert command[1] in out.stderr or command[2] in out.stderr
