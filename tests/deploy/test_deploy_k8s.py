"""deploy/k8s and deploy/production: valid against the Kubernetes schemas (kubernetes-validate,
offline), rendered by the real kustomize (`kubectl kustomize`), and consistent with the gateway
config they mount: the pod's files exist for `config check`, ports, probes and the drain agree."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.audit.checkpoint import generate as generate_checkpoint_key
from gateway.audit.shipping.shipper import Shipper
from gateway.runtime.supervisor import WORKER_STOP_MARGIN_SECONDS
from tests.certs import CA
from tests.conftest import ROOT, run_cli

K8S = ROOT / "deploy" / "k8s"
OVERLAY = K8S / "overlays" / "production"
PRODUCTION = ROOT / "deploy" / "production" / "gateway.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# The oldest Kubernetes minor the manifests claim (persistentVolumeClaimRetentionPolicy is on by
# default from 1.27) and the newest the validator knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator: no schema in the validator
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRDS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _render() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # Debian's kubernetes-client (1.20) embeds kustomize 2, too old for these kustomizations.
        pytest.skip(
            "kubectl >= 1.21 (kustomize v4+) is not installed; the manifests are still schema-validated"
        )
    out = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return _docs(out.stdout)


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    # A generated ConfigMap's name carries a content hash: <name>-<10 characters>.
    pattern = re.compile(rf"{name}(-[a-z0-9]{{10}})?") if name else None
    found = [
        d
        for d in docs
        if d["kind"] == kind and (pattern is None or pattern.fullmatch(d["metadata"]["name"]))
    ]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def test_every_base_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    kinds = set()
    for name in kustomization["resources"]:
        for doc in _docs((K8S / "base" / name).read_text()):
            _validate(doc)
            kinds.add(doc["kind"])
    assert kinds >= {
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "Secret",
    }


def test_the_validator_refuses_a_misspelt_field() -> None:
    doc = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        _validate(doc)


def test_the_rendered_production_overlay_is_valid_and_complete() -> None:
    docs = _render()
    for doc in docs:
        _validate(doc)
    sts = _one(docs, "StatefulSet", "pd-gateway")
    assert sts["metadata"]["namespace"] == "pd-gateway"
    assert sts["spec"]["replicas"] >= 2
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["spool"]
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "pd-gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(docs, "PodDisruptionBudget")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for secret in (d for d in docs if d["kind"] == "Secret"):  # placeholders only, never keys
        assert all(v.startswith("REPLACE-ME") for v in secret["stringData"].values())


def test_the_prometheus_rule_is_alerts_yml() -> None:
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        "deploy/k8s/base/prometheusrule.yaml is stale: run `python scripts/k8s_prometheusrule.py`"
    )


def _pod_files(tmp_path: Path, root: Path, docs: list[dict[str, Any]]) -> None:
    """Write what the pod's volumes hold under ``root`` (root/etc/pd-gateway/…), with throwaway
    TLS files and CA in place of the placeholders."""
    sts = _one(docs, "StatefulSet", "pd-gateway")
    pod = sts["spec"]["template"]["spec"]
    sources = {v["name"]: v for v in pod["volumes"]}
    ca = CA(tmp_path, "org")
    pair = ca.issue("pd-gateway", server=True)
    generate_checkpoint_key(tmp_path / "checkpoint.pem", tmp_path / "checkpoint.pub")
    real = {
        "tls.crt": pair.cert.read_text(),
        "tls.key": pair.key.read_text(),
        "org-ca.pem": ca.cert_file.read_text(),
        "checkpoint.pem": (tmp_path / "checkpoint.pem").read_text(),
        "subject.key": os.urandom(32).hex(),
    }
    for mount in pod["containers"][0]["volumeMounts"]:
        source = sources.get(mount["name"])
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if source is None or "emptyDir" in source:
            continue
        if "configMap" in source:
            data = _one(docs, "ConfigMap", source["configMap"]["name"])["data"]
        else:
            data = _one(docs, "Secret", source["secret"]["secretName"])["stringData"]
        for key, value in data.items():
            (target / key).write_text(real.get(key, value))


def _rooted(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _rooted(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_rooted(v, root) for v in value]
    if isinstance(value, str) and value.startswith(("/etc/pd-gateway/", "/var/lib/pd-gateway/")):
        return str(root / value.lstrip("/"))
    return value


def test_the_pods_config_passes_config_check_with_the_files_the_manifests_mount(
    tmp_path: Path,
) -> None:
    docs = _render()
    root = tmp_path / "pod"
    _pod_files(tmp_path, root, docs)
    mounted = root / "etc/pd-gateway/config/gateway.yaml"
    assert yaml.safe_load(mounted.read_text()) == yaml.safe_load(PRODUCTION.read_text())
    check = tmp_path / "gateway.yaml"
    check.write_text(yaml.safe_dump(_rooted(yaml.safe_load(mounted.read_text()), root)))
    out = run_cli("config", "check", str(check))
    assert out.returncode == 0, out.stderr


def test_ports_probes_paths_image_and_drain_agree_with_the_mounted_config() -> None:
    docs = _render()
    raw = _one(docs, "ConfigMap", "pd-gateway-config")["data"]["gateway.yaml"]
    data = yaml.safe_load(raw)
    assert "instance_id" not in data  # the StatefulSet pod's stable host name is the instance id
    listen, proxy = data["listen"], data.get("proxy", {})
    sts = _one(docs, "StatefulSet", "pd-gateway")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"proxy": listen["proxy"]["port"], "admin": listen["admin"]["port"]}
    scheme = "HTTPS" if "tls" in listen["admin"] else "HTTP"
    probes = {k: container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "admin", "scheme": scheme}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "admin", "scheme": scheme}
    assert container["args"] == ["serve", "--config", "/etc/pd-gateway/config/gateway.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == data["audit"]["spool_dir"]
    assert container["image"] == f"registry.example.internal/pd-gateway:{VERSION}"
    # Drain: preStop sleep, then the workers' drain (proxy.shutdown_timeout_seconds and the margin
    # the supervisor gives a worker before killing it), then the shippers' drain.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    shipper_drain = inspect.signature(Shipper.stop).parameters["drain_seconds"].default
    worker_stop = proxy.get("shutdown_timeout_seconds", 30) + WORKER_STOP_MARGIN_SECONDS
    needed = pre_stop + worker_stop + shipper_drain
    assert pod["terminationGracePeriodSeconds"] > needed
    service = _one(docs, "Service", "pd-gateway")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["proxy"]
    headless = _one(docs, "Service", "pd-gateway-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["ports"][0]["port"] == listen["admin"]["port"]
    monitor = _one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "admin",
        "/metrics",
        scheme.lower(),
    )


def test_the_production_example_passes_config_check_where_its_files_exist(tmp_path: Path) -> None:
    """Without a cluster or kubectl: the files the example names, provided by the test."""
    root = tmp_path / "pod"
    ca = CA(tmp_path, "org")
    pair = ca.issue("pd-gateway", server=True)
    etc = root / "etc/pd-gateway"
    for sub in ("tls", "ca", "policies", "secrets", "checkpoint", "subject"):
        (etc / sub).mkdir(parents=True)
    (etc / "subject/subject.key").write_text(os.urandom(32).hex())
    generate_checkpoint_key(etc / "checkpoint/checkpoint.pem", tmp_path / "checkpoint.pub")
    shutil.copy(pair.cert, etc / "tls/tls.crt")
    shutil.copy(pair.key, etc / "tls/tls.key")
    shutil.copy(ca.cert_file, etc / "ca/org-ca.pem")
    for name in ("model.conf", "policy.csv"):
        shutil.copy(ROOT / "policies" / name, etc / "policies" / name)
    (etc / "secrets/clickhouse-password").write_text("throwaway\n")
    data = yaml.safe_load(PRODUCTION.read_text())
    check = tmp_path / "gateway.yaml"
    check.write_text(yaml.safe_dump(_rooted(data, root)))
    out = run_cli("config", "check", str(check), "--json")
    assert out.returncode == 0, out.stderr
    assert data["identity"]["jwks_url"].startswith("https://")
    assert data["identity"]["roles_claim"] == "realm_access.roles"
    assert data["store"]["kind"] == "clickhouse" and len(data["store"]["hosts"]) >= 2
    assert "tls" in data["listen"]["proxy"] and not data["demo"]
    assert data["audit"]["subject_key_file"]  # subject ids as keyed hashes at rest (5.3)


def test_every_alert_has_a_runbook_entry_in_the_operator_guide() -> None:
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    alerts = [
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert alerts
    missing = [a for a in alerts if f"### {a} (" not in guide]
    assert missing == [], "add a section to docs/operator-guide.md for each"
