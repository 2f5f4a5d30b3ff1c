"""deploy/compose: `docker-compose config` (Debian's docker-compose, no engine needed) accepts
the stack, and its ports, mounts, health check and Prometheus setup agree with the gateway
config it runs; `promtool check config` accepts the Prometheus config with the rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import load_config
from tests.conftest import ROOT, run_cli

COMPOSE = ROOT / "deploy" / "compose"
FILE = COMPOSE / "docker-compose.yml"
PASSWORDS = {
    "CLICKHOUSE_GATEWAY_PASSWORD": "throwaway-1",
    "CLICKHOUSE_GRAFANA_PASSWORD": "throwaway-2",
    "GRAFANA_ADMIN_PASSWORD": "throwaway-3",
}
# Prometheus, Alertmanager, node exporter, Grafana, ClickHouse, ZooKeeper: the host keeps them.
STACK_PORTS = {9090, 9093, 9100, 3000, 8123, 9000, 9181, 2181}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is not installed: run `make system-deps`"
    clean = {k: v for k, v in os.environ.items() if k not in PASSWORDS}
    return subprocess.run(
        [tool, "-f", str(FILE), "config"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    out = _compose_config(PASSWORDS)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = yaml.safe_load(out.stdout)
    return data


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path → host path, for bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("/"):
            out[target] = Path(source)
    return out


def test_docker_compose_accepts_the_stack(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == {"gateway", "upstream", "clickhouse", "prometheus", "grafana"}


def test_the_stack_refuses_to_start_without_its_passwords() -> None:
    out = _compose_config({})
    assert out.returncode != 0
    assert "set it in deploy/compose/.env" in out.stderr


def test_the_gateway_service_agrees_with_its_config(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = stack["services"]["gateway"]
    mounts = _mounts(gateway)
    # The --config path inside the container maps to deploy/compose/gateway.yaml here, and the
    # config's relative paths resolve the same on both sides (deploy/ and policies/ side by side).
    path = gateway["command"][gateway["command"].index("--config") + 1]
    container_dir = next(t for t in mounts if path.startswith(t + "/"))
    host_file = mounts[container_dir] / path.removeprefix(container_dir + "/")
    assert host_file == COMPOSE / "gateway.yaml"
    assert mounts["/etc/pd-gateway/policies"] == ROOT / "policies"
    assert Path(container_dir).parent == Path("/etc/pd-gateway")

    env_name = yaml.safe_load(host_file.read_text())["store"]["password_env"]
    assert env_name in gateway["environment"]
    monkeypatch.setenv(env_name, "throwaway")
    out = run_cli("config", "check", str(host_file))  # the CLI, as an operator runs it
    assert out.returncode == 0, out.stderr
    cfg = load_config(host_file)

    published = {int(p["target"]): p for p in _ports(gateway)}
    assert set(published) == {cfg.proxy_listen.port, cfg.admin_listen.port}
    assert all(p["host_ip"] == "127.0.0.1" for p in published.values())
    assert f":{cfg.admin_listen.port}/readyz" in " ".join(gateway["healthcheck"]["test"])
    assert cfg.audit.spool_dir == Path("/var/lib/pd-gateway/spool")
    assert any(v.endswith(":/var/lib/pd-gateway/spool:rw") for v in gateway["volumes"])
    grace = _seconds(gateway["stop_grace_period"])
    assert grace > cfg.proxy.shutdown_timeout_seconds + 10  # + the shipper's drain
    assert gateway["image"] == stack["services"]["upstream"]["image"] == f"pd-gateway:{VERSION}"

    # The store, the upstreams and the admin allow list name the stack's services and network.
    assert cfg.store is not None and cfg.store.hosts == (("clickhouse", 9000),)
    upstream = stack["services"]["upstream"]["entrypoint"]
    port = upstream[upstream.index("--port") + 1]
    assert set(cfg.upstreams.values()) == {f"http://upstream:{port}"}
    subnet = stack["networks"]["pdgw"]["ipam"]["config"][0]["subnet"]
    assert subnet in {str(n) for n in cfg.admin_listen.allow}


def _ports(service: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append(p)
        else:  # "127.0.0.1:8080:8080/tcp"
            host_ip, published, target = str(p).partition("/")[0].split(":")
            out.append({"host_ip": host_ip, "published": published, "target": target})
    return out


def _seconds(value: str | int) -> float:
    text = str(value)
    return float(text[:-1]) * (60 if text.endswith("m") else 1) if text[-1] in "sm" else float(text)


def test_no_published_port_takes_a_stack_default_on_the_host(stack: dict[str, Any]) -> None:
    published = {int(p["published"]) for s in stack["services"].values() for p in _ports(s)}
    assert published and not published & STACK_PORTS
    assert all(
        p.get("host_ip") == "127.0.0.1" for s in stack["services"].values() for p in _ports(s)
    )


def test_prometheus_loads_the_gateways_alert_rules_and_scrapes_its_admin_port(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = stack["services"]["prometheus"]
    mounts = _mounts(prometheus)
    conf = mounts["/etc/prometheus/prometheus.yml"]
    prom = yaml.safe_load(conf.read_text())
    (rule_file,) = prom["rule_files"]
    assert mounts[f"/etc/prometheus/{rule_file}"] == ROOT / "deploy" / "prometheus" / "alerts.yml"
    admin_port = yaml.safe_load((COMPOSE / "gateway.yaml").read_text())["listen"]["admin"]["port"]
    targets = [
        t for job in prom["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"gateway:{admin_port}"]
    # promtool checks the config and the rules it loads, laid out as in the container.
    (tmp_path / "rules").mkdir()
    shutil.copy(conf, tmp_path / "prometheus.yml")
    shutil.copy(mounts[f"/etc/prometheus/{rule_file}"], tmp_path / rule_file)
    out = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_grafana_is_provisioned_with_clickhouse_and_prometheus_and_a_dashboards_folder(
    stack: dict[str, Any],
) -> None:
    grafana = stack["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())
    by_type = {s["type"]: s for s in sources["datasources"]}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    ch = by_type["grafana-clickhouse-datasource"]
    assert ch["jsonData"]["host"] == "clickhouse" and ch["jsonData"]["username"] == "grafana"
    assert ch["secureJsonData"]["password"] == "$CH_GRAFANA_PASSWORD"
    assert "CH_GRAFANA_PASSWORD" in grafana["environment"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == ROOT / "dashboards"
    assert ch["jsonData"]["defaultDatabase"] == "pd_audit_dashboards"
    # 9.2.6: Grafana's user is its own file, limited to the aggregates database; what it may and
    # may not read on a real server is tests/deploy/test_grafana_access.py.
    ch_mounts = _mounts(stack["services"]["clickhouse"])
    grafana_user = ch_mounts["/etc/clickhouse-server/users.d/grafana.xml"]
    assert grafana_user == COMPOSE / "clickhouse" / "users.d" / "grafana.xml"
    gateway_user = (COMPOSE / "clickhouse" / "users.d" / "pd-gateway.xml").read_text()
    assert "<grafana>" not in gateway_user
