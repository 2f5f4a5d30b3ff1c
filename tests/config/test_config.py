"""Config: validated completely, every problem with its line and key path; secrets never echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from gateway.config.load import load_config, parse_config
from gateway.core.errors import ConfigError
from tests.conftest import ROOT, Keys, config_dict, demo_config_dict, run_cli, write_config

DEMO = ROOT / "deploy" / "local" / "gateway.yaml"


def test_demo_config_is_valid_and_fills_defaults() -> None:
    cfg = load_config(DEMO)
    assert cfg.demo and cfg.audit.durability == "fsync"
    assert cfg.admin_listen.host == "127.0.0.1"
    assert {r.category for r in cfg.routes} >= {
        "employee",
        "employee_health",
        "counterparty",
        "site_visitor",
    }


# Prometheus, Alertmanager, node exporter, Grafana, ClickHouse (HTTP, native, keeper), ZooKeeper.
STACK_PORTS = {9090, 9093, 9100, 3000, 8123, 9000, 9181, 2181}


def test_default_ports_do_not_collide_with_the_stack_the_gateway_ships_with(
    tmp_path: Path, keys: Keys
) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data.pop("listen", None)
    cfg = load_config(write_config(tmp_path, data, keys))
    demo = load_config(DEMO)
    ports = {cfg.proxy_listen.port, cfg.admin_listen.port, demo.admin_listen.port}
    assert cfg.admin_listen.port == demo.admin_listen.port == 9470
    assert not ports & STACK_PORTS


def test_every_problem_is_reported_at_once_with_line_and_key(tmp_path: Path, keys: Keys) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data["identity"]["algorithms"] = ["HS256", "none"]
    data["identity"]["issuer"] = None
    data["audit"]["durability"] = "sometimes"
    data["routes"][1]["category"] = "biometric"  # 2.4: not processed, no such category
    data["routes"][2]["upstream"] = "payroll"
    data["proxy"]["trusted_proxies"] = ["not-a-net"]
    data["listen"] = {"proxy": {"port": 70000, "hots": "x"}}
    path = write_config(tmp_path, data, keys)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    expected_keys = [
        "identity.algorithms.0",
        "identity.algorithms.1",
        "identity.issuer",
        "audit.durability",
        "routes.1.category",
        "routes.2.upstream",
        "proxy.trusted_proxies.0",
        "listen.proxy.port",
        "listen.proxy.hots",
    ]
    for key in expected_keys:
        assert any(f"{key}: " in p for p in problems), (key, problems)
    assert all(p.startswith("line ") for p in problems if "identity.issuer" not in p)
    text = path.read_text().splitlines()
    line = next(p for p in problems if "routes.1.category" in p).split(":")[0].removeprefix("line ")
    assert "category" in text[int(line) - 1]
    assert str(path) in str(info.value)


def test_missing_security_settings_have_no_silent_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": {}, "routes": []}, tmp_path / "x.yaml")
    text = str(info.value)
    for key in (
        "identity",
        "identity.issuer",
        "identity.audience",
        "identity.algorithms",
        "proxy.trusted_proxies",
        "authz.model",
        "audit.spool_dir",
    ):
        assert f"{key}: is required" in text, key


def test_demo_signing_key_is_refused_outside_a_demo_config(tmp_path: Path, keys: Keys) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data["identity"]["demo_signing_key_file"] = "key.pem"
    with pytest.raises(ConfigError, match=r"identity\.demo_signing_key_file: only allowed"):
        load_config(write_config(tmp_path, data, keys))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("identity:\n  issuer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(path)


def test_config_check_cli_prints_effective_config_as_json() -> None:
    out = run_cli("config", "check", str(DEMO), "--json")
    assert out.returncode == 0, out.stderr
    effective = json.loads(out.stdout)
    assert effective["audit"]["max_pending"] == 10000  # a default, filled in
    assert effective["identity"]["algorithms"] == ["RS256"]


def test_config_check_cli_fails_with_file_line_and_key(tmp_path: Path) -> None:
    data = yaml.safe_load(DEMO.read_text())
    data["audit"]["durability"] = "never"
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run_cli("config", "check", str(path))
    assert out.returncode == 2
    assert str(path) in out.stderr and "audit.durability: must be one of fsync, batch" in out.stderr
    assert "line " in out.stderr


def test_routes_cli_lists_every_route_with_category_and_subject() -> None:
    out = run_cli("routes", "--config", str(DEMO), "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["hr-medical"]["category"] == "employee_health"
    assert rows["hr-export"]["actions"] == {"GET": "export", "HEAD": "export"}
    assert rows["site-leads"]["subject"] == "query lead_id"
    table = run_cli("routes", "--config", str(DEMO))
    assert "hr-medical" in table.stdout and "employee_health" in table.stdout


def test_route_prefixes_that_differ_only_in_case_or_hold_ambiguous_forms_are_refused(
    tmp_path: Path, keys: Keys
) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data["routes"][3]["prefix"] = "/HR/Medical"  # overlaps routes.2 (/hr/medical), all methods
    data["routes"][4]["prefix"] = "/crm/counterparties;v=1"
    data["routes"][5]["prefix"] = "/crm/export."
    path = write_config(tmp_path, data, keys)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    assert "routes.3.prefix: '/HR/Medical' overlaps routes.2" in problems
    assert "routes.4.prefix: must not contain ';'" in problems
    assert "routes.5.prefix: must not contain ';'" in problems


def test_head_takes_gets_action_and_route(tmp_path: Path, keys: Keys) -> None:
    """RFC 9110 §9.3.2: upstreams answer HEAD with GET's handler, so HEAD is GET's access."""
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    export = next(r for r in data["routes"] if r["name"] == "hr-export")
    cfg = load_config(write_config(tmp_path, data, keys))
    route = next(r for r in cfg.routes if r.name == "hr-export")
    assert route.methods == {"GET", "HEAD"} and route.actions["HEAD"] == "export"
    export["actions"] = {"GET": "export", "HEAD": "read"}
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    assert any("HEAD must have GET's action" in p for p in info.value.problems)
    export["actions"], export["methods"] = {"GET": "export"}, ["HEAD"]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    assert any("HEAD without GET" in p for p in info.value.problems)


def test_a_subject_id_kind_is_one_of_three(tmp_path: Path, keys: Keys) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    i, route = next((i, r) for i, r in enumerate(data["routes"]) if r.get("subject"))
    route["subject"] = {**route["subject"], "id": "text"}
    cfg = load_config(write_config(tmp_path, data, keys))
    rule = next(r for r in cfg.routes if r.name == route["name"]).subject
    assert rule is not None and rule.id == "text"
    route["subject"]["id"] = "uuid"
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    (problem,) = info.value.problems
    assert problem.endswith(f"routes.{i}.subject.id: must be one of auto, integer, text")
    assert problem.startswith("line ")


def test_input_names_are_plain_names_apart_from_the_query_subject_and_method(
    tmp_path: Path, keys: Keys
) -> None:
    """Decision 039: `subject.input_names` is read into the route; a name that is not a plain
    parameter name, or that reads as the query subject, `_method` or another listed name, is a
    problem named with its file line and key."""
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    i, route = next((i, r) for i, r in enumerate(data["routes"]) if r.get("subject"))
    route["subject"] = {"path": route["subject"]["path"], "input_names": ["id", "employee_id"]}
    cfg = load_config(write_config(tmp_path, data, keys))
    rule = next(r for r in cfg.routes if r.name == route["name"]).subject
    assert rule is not None and rule.input_names == ("id", "employee_id")
    assert rule.body_names == ("id", "employee_id")
    route["subject"] = {
        "path": route["subject"]["path"],
        "query": "lead.id",  # `lead_id` to PHP
        "input_names": ["id", 7, "emp_id", "LEAD_ID", "_METHOD", "EMP_ID", "id[]"],
    }
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    problems = info.value.problems
    key = f"routes.{i}.subject.input_names"
    assert [p.partition(": ")[2] for p in problems] == [
        f"{key}.1: must be a parameter name: letters, digits and _",
        f"{key}.3: 'LEAD_ID' is read as the query subject parameter, which bodies may not carry",
        f"{key}.4: '_METHOD' is the method override parameter (decision 011)",
        f"{key}.5: 'EMP_ID' is listed already (input_names.2)",
        f"{key}.6: must be a parameter name: letters, digits and _",
    ]
    assert all(p.startswith("line ") for p in problems)
    route["subject"] = {"query": "lead_id", "input_names": ["id"]}
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    (problem,) = info.value.problems
    assert problem.endswith(f"{key}: needs subject.path: they are other readings of it")


def test_method_overrides_and_stripped_headers_are_validated_with_their_key(
    tmp_path: Path, keys: Keys
) -> None:
    data = config_dict(
        tmp_path, "http://127.0.0.1:1", proxy={"strip_headers": ["X-Ok", "bad name"]}
    )
    data["routes"][0]["method_override"] = ["header", "form"]
    data["routes"][1]["method_override"] = ["cookie"]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    text = str(info.value)
    assert "proxy.strip_headers.1: must be a header name" in text
    assert "routes.0.method_override: 'form' cannot be declared" in text
    assert "routes.1.method_override: must list 'header' and/or 'query'" in text
    data["proxy"]["strip_headers"] = ["X_Tenant"]
    data["routes"][0]["method_override"] = ["header", "query"]
    del data["routes"][1]["method_override"]
    cfg = load_config(write_config(tmp_path, data, keys))
    assert cfg.proxy.strip_headers == frozenset({"x-tenant"})
    assert cfg.routes[0].method_override == frozenset({"header", "query"})


def test_every_missing_referenced_file_is_reported_with_its_line_and_key(
    tmp_path: Path, keys: Keys
) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1", demo=True)
    data["authz"] = {"model": "nope/model.conf", "policy": "nope/policy.csv"}
    data["identity"]["demo_signing_key_file"] = "gone.pem"
    data["identity"]["jwks_ca_file"] = "gone-ca.pem"
    data["listen"] = {"proxy": {"tls": {"cert_file": "gw.pem", "key_file": "gw.key"}}}
    data["upstreams"]["hr"] = {"url": "https://hr.internal", "ca_file": "org-ca.pem"}
    data["store"] = {"kind": "clickhouse", "hosts": ["ch:9440"], "ca_file": str(tmp_path)}
    data["store"]["password_file"] = "ch-password"
    path = write_config(tmp_path, data, keys)
    (tmp_path / "jwks.json").unlink()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    text = path.read_text().splitlines()
    for key, name in [
        ("authz.model", "nope/model.conf"),
        ("authz.policy", "nope/policy.csv"),
        ("identity.jwks_file", "jwks.json"),
        ("identity.demo_signing_key_file", "gone.pem"),
        ("identity.jwks_ca_file", "gone-ca.pem"),
        ("listen.proxy.tls.cert_file", "gw.pem"),
        ("listen.proxy.tls.key_file", "gw.key"),
        ("upstreams.hr.ca_file", "org-ca.pem"),
        ("store.password_file", "ch-password"),
    ]:
        problem = next((p for p in problems if f"{key}: file not found: " in p), None)
        assert problem is not None, (key, problems)
        assert problem.endswith(str(tmp_path / name)), problem
        line = int(problem.split(":")[0].removeprefix("line "))
        assert key.rpartition(".")[2] in text[line - 1], (key, text[line - 1])
    assert any("store.ca_file: is a directory, not a file" in p for p in problems)
    assert not any("cannot use for TLS" in p for p in problems)  # one message a file


def test_config_check_cli_names_a_missing_policy_file(tmp_path: Path) -> None:
    data = demo_config_dict()
    data["authz"]["policy"] = "policy.csv"
    data["audit"]["spool_dir"] = str(tmp_path / "spool")
    data["store"]["path"] = str(tmp_path / "chdb")
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run_cli("config", "check", str(path))
    assert out.returncode == 2
    assert f"authz.policy: file not found: {tmp_path / 'policy.csv'}" in out.stderr


def test_the_oidc_section_is_validated_with_every_problem_and_no_secret_echoed(
    tmp_path: Path, keys: Keys
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value")
    bad_key = tmp_path / "not-a-key"
    bad_key.write_text("short")
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data["oidc"] = {
        "issuer": "ftp://idp",
        "client_id": "gw",
        "client_secret_file": str(secret),
        "redirect_uri": "http://127.0.0.1:8080/callback",
        "scopes": ["profile"],
        "session_routes": ["no-such-route"],
        "session": {
            "key_file": str(bad_key),
            "revocation_file": str(tmp_path / "revoked.jsonl"),
            "idle_timeout_seconds": 99999,
            "absolute_timeout_seconds": 3600,
        },
    }
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    text = str(info.value)
    for key in (
        "oidc.issuer",
        "oidc.redirect_uri",
        "oidc.scopes",
        "oidc.session_routes",
        "oidc.session.key_file",
        "oidc.session.idle_timeout_seconds",
    ):
        assert f"{key}: " in text, (key, text)
    assert "s3cret-value" not in text


def test_the_demo_config_has_browser_login_with_timeouts_for_personal_data() -> None:
    cfg = load_config(DEMO)
    assert cfg.oidc is not None and cfg.oidc.origin == "http://127.0.0.1:8080"
    assert not cfg.oidc.secure_cookies  # the demo has no TLS
    assert json.loads(cfg.to_json())["oidc"]["client_secret"] == "**********"
    s = cfg.oidc.session
    assert s.idle_timeout_seconds <= 900 and s.absolute_timeout_seconds <= 8 * 3600


def test_the_console_section_is_validated_with_every_problem(tmp_path: Path, keys: Keys) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data["console"] = {"path": "/console/", "timezone": "Mars/Olympus", "page_rows": 5, "x": 1}
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    text = str(info.value)
    for problem in (
        "console.path: must be a path under /_pdgw/",
        "console.timezone: unknown time zone",
        "console.page_rows: must be at least 10",
        "console.x: unknown key",
        "console: needs the oidc section",
        "console: needs a store section",
    ):
        assert problem in text, (problem, text)
    data["console"] = {"path": "/_pdgw/logout/"}
    with pytest.raises(ConfigError, match=r"console\.path: is a page of the browser login"):
        load_config(write_config(tmp_path, data, keys))


def test_the_console_needs_an_origin_of_its_own_on_the_logins_host(
    tmp_path: Path, keys: Keys
) -> None:
    """Decision 035: the console on the proxied apps' origin is what its own listener exists to
    prevent; on another host the login's host-only cookie would never reach it; on plain http
    beyond loopback browsers would not send the `Sec-Fetch-*` headers it relies on."""
    from tests.certs import CA

    server = CA(tmp_path, "org").issue("gateway", server=True)
    tls = {"cert_file": str(server.cert), "key_file": str(server.key)}
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    key = tmp_path / "session.key"
    key.write_bytes(Fernet.generate_key())
    (tmp_path / "client-secret").write_text("s3cret")
    data["oidc"] = {
        "issuer": "http://127.0.0.1:9",
        "client_id": "c",
        "client_secret_file": str(tmp_path / "client-secret"),
        "redirect_uri": "https://hr.example.com/_pdgw/callback",
        "session": {"key_file": str(key), "revocation_file": str(tmp_path / "revoked.jsonl")},
    }
    data["store"] = {"kind": "embedded", "path": str(tmp_path / "chdb")}
    data["listen"] = {"proxy": {"port": 8443, "tls": tls}}  # behind a load balancer on 443

    def problems(console: dict[str, object]) -> str:
        data["console"] = console
        with pytest.raises(ConfigError) as info:
            load_config(write_config(tmp_path, data, keys))
        return str(info.value)

    clash = "console.listen.port: is the proxy listener's port"
    assert clash in problems({"listen": {"port": 8443}})
    # Even with an origin of its own: both would share the port (SO_REUSEPORT), the kernel
    # handing the proxied apps' connections to the console's listener now and then.
    assert clash in problems({"listen": {"port": 8443}, "origin": "https://hr.example.com:9443"})
    assert "console.listen.port: gives the console the proxied apps' origin" in problems(
        {"listen": {"port": 443}}  # https://hr.example.com (443) is the login's origin
    )
    for origin in ("https://hr.example.com", "https://HR.example.com:443"):
        assert "console.origin: gives the console the proxied apps' origin" in problems(
            {"origin": origin}
        )
    for origin in ("https://audit.example.com:9443", "http://hr.example.com:8090"):
        assert "console.origin: must be on the login's scheme and host" in problems(
            {"origin": origin}
        )
    for origin in (
        "https://hr.example.com:9443/x",
        "https://hr.example.com:9443?a=1",
        "https://u@hr.example.com:9443",
        "https://hr.example.com:0",
        "https://hr.example.com:port",
    ):
        assert "console.origin: must be an origin" in problems({"origin": origin}), origin
    # Derived from the login's origin and the listener's port, or given (a load balancer's port).
    data["console"] = {"listen": {"port": 9443, "tls": tls}}
    assert load_config(write_config(tmp_path, data, keys)).console_origin == (
        "https://hr.example.com:9443"
    )
    data["console"] = {"listen": {"port": 9443}, "origin": "https://hr.example.com:4443"}
    assert load_config(write_config(tmp_path, data, keys)).console_origin == (
        "https://hr.example.com:4443"
    )
    # Plain http: only on loopback (the demo).
    data["oidc"]["redirect_uri"] = "http://hr.example.com/_pdgw/callback"
    data["listen"] = {"proxy": {"port": 8080}}
    assert "console: needs https (oidc.redirect_uri)" in problems({"listen": {"port": 8090}})
    data["oidc"]["redirect_uri"] = "http://127.0.0.1:8080/_pdgw/callback"
    data["console"] = {"listen": {"port": 8090}}
    assert load_config(write_config(tmp_path, data, keys)).console_origin == (
        "http://127.0.0.1:8090"
    )


def test_the_demo_config_has_the_console_at_its_default_path_in_moscow_time() -> None:
    cfg = load_config(DEMO)
    assert cfg.console is not None and cfg.console.path == "/_pdgw/console/"
    assert cfg.console.timezone == "Europe/Moscow" and cfg.oidc is not None
    assert cfg.console_origin == "http://127.0.0.1:8090"  # its own origin (decision 035)
