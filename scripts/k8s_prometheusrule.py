"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The alert rules have one source, alerts.yml (unit-tested with promtool); the Prometheus Operator
needs them wrapped in a PrometheusRule. Run this after changing alerts.yml;
tests/deploy/test_deploy_k8s.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yml by `python scripts/k8s_prometheusrule.py`;\n"
    "# do not edit: change alerts.yml (and its promtool tests), then rerun the script.\n"
)


def render(alerts: dict[str, Any]) -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "pd-gateway"},
        "spec": {"groups": alerts["groups"]},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, width=1000)


def main() -> int:
    TARGET.write_text(render(yaml.safe_load(ALERTS.read_text())))
    print(f"{TARGET.relative_to(ROOT)}: written from {ALERTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
