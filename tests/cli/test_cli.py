"""`pd-gateway token`, `pd-gateway audit tail`, `--version` and the help of every option."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

import yaml
from jose import jwt

from gateway.cli import build_parser
from tests.conftest import ROOT, Gw, Keys, anonymous_refusals, demo_config_dict, run_cli

DEMO = ROOT / "deploy" / "local" / "gateway.yaml"


def test_token_is_minted_from_the_demo_key_and_verifies_against_the_demo_jwks() -> None:
    out = run_cli("token", "--sub", "alice", "--roles", "hr_officer,dpo", "--config", str(DEMO))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    jwks = json.loads((DEMO.parent / "demo-jwks.json").read_text())
    cfg = yaml.safe_load(DEMO.read_text())["identity"]
    claims = jwt.decode(
        token, jwks, algorithms=["RS256"], audience=cfg["audience"], issuer=cfg["issuer"]
    )
    assert claims["sub"] == "alice" and claims["roles"] == ["hr_officer", "dpo"]


def test_token_refuses_a_config_not_marked_demo(tmp_path: Path) -> None:
    data = demo_config_dict()
    data["demo"] = False
    data.pop("oidc")  # browser login's files are relative to deploy/local; not what this is about
    data.pop("console")  # it needs the browser login
    data["identity"].pop("demo_signing_key_file")
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run_cli("token", "--sub", "alice", "--roles", "hr_officer", "--config", str(path))
    assert out.returncode == 2
    assert "not a demo config" in out.stderr and out.stdout == ""


async def test_audit_tail_shows_the_joined_events(gw: Gw, keys: Keys) -> None:
    token = keys.token("alice", ["hr_officer"])
    bob = keys.token("bob", ["accountant"])
    await gw.client.get("/hr/medical/1001", headers={"Authorization": f"Bearer {token}"})
    await gw.client.get("/hr/medical/1001", headers={"Authorization": f"Bearer {bob}"})
    await gw.client.get("/hr/medical/1001")
    await anonymous_refusals(gw)
    out = run_cli("audit", "tail", "--spool", str(gw.spool_dir), "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(e["kind"], e.get("decision"), e["status"]) for e in events] == [
        ("access", "allow", 200),
        ("access", "deny", 403),
        ("refusal_summary", None, 401),
    ]
    assert events[0]["subject_ids"] == ["1001"] and events[0]["category"] == "employee_health"
    assert events[0]["outcome"] == "complete"
    text = run_cli("audit", "tail", "--spool", str(gw.spool_dir), "-n", "2")
    first, second = text.stdout.splitlines()
    assert "DENY" in first and "user=bob" in first and "no_matching_rule" in first
    assert "1 refused" in second and "missing_token" in second


async def test_audit_tail_shows_session_and_block_records_too(tmp_path: Path) -> None:
    from gateway.audit.events import AuthEvent, SubjectBlock
    from gateway.audit.recorder import Recorder
    from gateway.audit.spool import Spool

    spool = Spool(tmp_path, instance="gw-1")
    spool.open()
    recorder = Recorder(spool)
    await recorder.note(AuthEvent("e1", 1, "r1", "alice", ["hr_officer"], "::1", "login", "", "s"))
    await recorder.note(SubjectBlock("b1", 2, "grace", "block", "h:k:x", "request", "r2", "DPO-1"))
    spool.close()
    out = run_cli("audit", "tail", "--spool", str(tmp_path))
    assert out.returncode == 0, out.stderr
    login, block = out.stdout.splitlines()
    assert "SESSION login user=alice" in login
    assert "SUBJECT block h:k:x label=DPO-1 by grace" in block


async def test_audit_tail_reads_every_chain_of_a_gateways_spool_in_the_order_of_time(
    tmp_path: Path,
) -> None:
    """`serve` keeps the supervisor's chain in audit.spool_dir and each worker's in w<i>
    (decision 030): tail on the spool_dir shows them all, each record numbered in its chain."""
    from gateway.audit.events import AuthEvent, SubjectBlock
    from gateway.audit.recorder import Recorder
    from gateway.audit.spool import Spool

    supervisor = Spool(tmp_path, instance="gw-1")
    worker = Spool(tmp_path / "w0", instance="gw-1-w0")
    for spool in (supervisor, worker):
        spool.open()
    await Recorder(worker).note(
        AuthEvent("e1", 1, "r1", "alice", ["hr_officer"], "::1", "login", "", "s")
    )
    await Recorder(supervisor).note(
        SubjectBlock("b1", 2, "grace", "block", "h:k:x", "request", "r2", "DPO-1")
    )
    await Recorder(worker).note(
        AuthEvent("e2", 3, "r3", "alice", ["hr_officer"], "::1", "logout", "", "s")
    )
    for spool in (supervisor, worker):
        spool.close()
    out = run_cli("audit", "tail", "--spool", str(tmp_path))
    assert out.returncode == 0, out.stderr
    login, block, logout = out.stdout.splitlines()
    assert " w0#1 SESSION login user=alice" in login
    assert " supervisor#1 SUBJECT block h:k:x" in block
    assert " w0#2 SESSION logout user=alice" in logout
    out = run_cli("audit", "tail", "--spool", str(tmp_path), "--json", "-n", "1")
    (last,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (last["chain"], last["seq"], last["event"]) == ("w0", 2, "logout")


async def test_audit_tail_shows_anomaly_reviews(tmp_path: Path) -> None:
    from gateway.audit.events import AnomalyReview
    from gateway.audit.recorder import Recorder
    from gateway.audit.spool import Spool

    spool = Spool(tmp_path, instance="gw-1")
    spool.open()
    recorder = Recorder(spool)
    await recorder.note(AnomalyReview("v1", 3, "an-1", "frank", "reviewed", "a late shift", "r3"))
    spool.close()
    out = run_cli("audit", "tail", "--spool", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (review,) = out.stdout.splitlines()
    assert "REVIEW anomaly=an-1 reviewed by frank: a late shift req=r3" in review


def test_audit_tail_reports_a_missing_spool() -> None:
    out = run_cli("audit", "tail", "--spool", "/nonexistent/spool")
    assert out.returncode == 2 and "/nonexistent/spool" in out.stderr


def test_version_comes_from_the_package_metadata() -> None:
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pd-gateway {importlib.metadata.version('pd-gateway')}"


def test_every_option_of_every_command_has_help() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help or not action.help.strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "pd-gateway")
    assert missing == []
