"""What the supervisor's admin port shows of every process (decisions 016, 030): the metrics of
all of them in one exposition, and the policy a worker's metrics say is in force."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Families the supervisor's shippers report for a worker's spool (its own process has none).
SHIPPER_FAMILIES = ("pdgw_shipper_", "pdgw_store_up")


def merged_metrics(
    own: CollectorRegistry,
    workers: Mapping[str, bytes],
    shippers: Mapping[str, CollectorRegistry],
) -> bytes:
    """Every process's metrics, each sample labelled with its ``worker``: ``own`` (the
    supervisor's, ``supervisor``), ``workers`` (each serving worker's scraped exposition, by
    name) and ``shippers`` (the supervisor's shipper of each worker's spool, by name: a worker's
    shipper families come from there)."""
    merged = _Families()
    merged.add(own.collect(), "supervisor")
    for name, body in workers.items():
        families = text_string_to_metric_families(body.decode())
        merged.add((f for f in families if not shipper_family(f.name)), name)
    for name, registry in shippers.items():
        merged.add((f for f in registry.collect() if shipper_family(f.name)), name)
    out = CollectorRegistry(auto_describe=False)
    out.register(merged)
    return generate_latest(out)


def policy_version(metrics: bytes) -> str | None:
    """The policy version a process's /metrics says is in force (``pdgw_policy_info``)."""
    for family in text_string_to_metric_families(metrics.decode()):
        for sample in family.samples:
            if sample.name == "pdgw_policy_info" and sample.value == 1:
                return sample.labels.get("version")
    return None


def shipper_family(name: str) -> bool:
    return name.startswith(SHIPPER_FAMILIES)


class _Families:
    """Metric families merged from several processes (a prometheus_client collector)."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, families: Iterable[Metric], worker: str) -> None:
        for f in families:
            m = self._families.get(f.name)
            if m is None:
                m = self._families[f.name] = Metric(f.name, f.documentation, f.type, f.unit)
            m.samples.extend(s._replace(labels={"worker": worker, **s.labels}) for s in f.samples)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families.values())
