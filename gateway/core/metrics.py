"""Every Prometheus metric, defined once, on an injected registry.

Labels are bounded: route names, decisions, status codes, reasons from a fixed vocabulary.
Never a per-user label (cardinality); per-user analysis lives in the audit store. These metrics
feed the anomaly alerts of 9.1.6 (denial spikes, audit pipeline failure).

The metrics every request touches (requests, refusals, latencies, audit records, cache results)
are ``LoopCounter``/``LoopHistogram``: plain numbers changed by the event loop's thread alone and
read by the same thread when /metrics is scraped, so they need none of prometheus-client's
per-update locking and checks (about 60 Python calls a request, docs/benchmarks.md). The rest —
updated from the spool's sync thread, the shipper's thread, or rarely — stay prometheus-client's
thread-safe types. The exposition is the same (no ``_created`` series for the loop's counters).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_FSYNC = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopCounter(Collector):
    """A labelled counter for the event loop's thread only (module docstring)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._series: dict[tuple[str, ...], _Count] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Count:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Count()
        return series

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, series in list(self._series.items()):
            family.add_metric(list(values), series.value)
        yield family


class LoopGauge(Collector):
    """An unlabelled gauge set by the event loop's thread only (module docstring)."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self._name, self._doc = name, documentation
        self.value = 0.0
        registry.register(self)

    def set(self, value: float) -> None:
        self.value = value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, value=self.value)


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class LoopHistogram(Collector):
    """A labelled histogram for the event loop's thread only (module docstring)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], _Buckets] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Buckets:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Buckets(self._bounds)
        return series

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), series.counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(list(values), buckets, series.sum)
        yield family


_LOOP_TYPES = (LoopCounter, LoopHistogram)


def _bound_text(bound: float) -> str:
    """``le`` as prometheus-client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = LoopCounter(
            "pdgw_requests",
            "Requests handled by the proxy, by route, decision and HTTP status.",
            ["route", "decision", "status"],
            registry=registry,
        )
        self.denials = LoopCounter(
            "pdgw_denials",
            "Requests refused, by route and reason (unauthenticated, forbidden, audit failure, …).",
            ["route", "reason"],
            registry=registry,
        )
        self.overhead = LoopHistogram(
            "pdgw_gateway_overhead_seconds",
            "Time spent in the gateway before the upstream was called (identity, authz, audit).",
            ["route"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.upstream = LoopHistogram(
            "pdgw_upstream_seconds",
            "Time from sending the request upstream to the end of its response.",
            ["route"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.upstream_errors = LoopCounter(
            "pdgw_upstream_errors",
            "Upstream failures by route and kind (connect, timeout, aborted).",
            ["route", "kind"],
            registry=registry,
        )
        # The client's side of an authorised exchange: kept apart from the upstream's, so a
        # client's oversized or slow body does not raise the upstream-errors alert.
        self.client_errors = LoopCounter(
            "pdgw_client_errors",
            "Authorised exchanges the client cut short, by route and kind (body too large, too "
            "slow, a method override in the body, hung up).",
            ["route", "kind"],
            registry=registry,
        )
        self.audit_events = LoopCounter(
            "pdgw_audit_records",
            "Audit records appended to the spool, by kind (access, outcome).",
            ["kind"],
            registry=registry,
        )
        self.spool_pending = LoopGauge(
            "pdgw_spool_pending_records",
            "Records taken by the spool writer in its last batch (queue depth).",
            registry=registry,
        )
        self.spool_bytes_written = LoopCounter(
            "pdgw_spool_written_bytes", "Bytes written to spool segments.", registry=registry
        )
        self.spool_fsync = Histogram(
            "pdgw_spool_fsync_seconds",
            "Duration of spool fsync calls.",
            buckets=_FSYNC,
            registry=registry,
        )
        self.spool_unsynced_age = Gauge(
            "pdgw_spool_unsynced_age_seconds",
            "Age of the oldest audit record written but not yet fsynced (0: all durable); in "
            "durability batch, what a power loss would take.",
            registry=registry,
        )
        self.spool_errors = Counter(
            "pdgw_spool_errors",
            "Spool failures by reason (write_failed, backlog_full).",
            ["reason"],
            registry=registry,
        )
        self.spool_healthy = Gauge(
            "pdgw_spool_healthy",
            "1 while the audit spool accepts records; 0 means personal-data requests are refused.",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "pdgw_spool_bytes",
            "Bytes of spool segments on disk (not yet shipped).",
            registry=registry,
        )
        self.spool_backlog = Gauge(
            "pdgw_spool_backlog_bytes",
            "Spool bytes not yet confirmed in the audit store (what audit.max_spool_bytes limits).",
            registry=registry,
        )
        self.spool_over_limit = Gauge(
            "pdgw_spool_over_limit",
            "1 when the spool passed audit.max_spool_bytes (the store has been down too long).",
            registry=registry,
        )
        self.shipped = Counter(
            "pdgw_shipper_events", "Audit events confirmed in the audit store.", registry=registry
        )
        self.shipper_batches = Counter(
            "pdgw_shipper_batches", "Batches confirmed in the audit store.", registry=registry
        )
        self.shipper_retries = Counter(
            "pdgw_shipper_batches_retried",
            "Batch attempts repeated after a store error.",
            registry=registry,
        )
        self.shipper_already_stored = Counter(
            "pdgw_shipper_inserts_found_stored",
            "Inserts whose outcome was unknown and which check-before-retry found already stored.",
            registry=registry,
        )
        self.shipper_errors = Counter(
            "pdgw_shipper_errors",
            "Shipper errors by kind (store, bad_record, partial_batch, intent_mismatch).",
            ["kind"],
            registry=registry,
        )
        self.shipper_lag = Gauge(
            "pdgw_shipper_lag_seconds",
            "Age of the oldest audit event not yet confirmed in the store (0 when caught up).",
            registry=registry,
        )
        self.store_up = Gauge(
            "pdgw_store_up",
            "1 if the audit store answered the shipper's last contact (a batch, or a probe every "
            "15 s when idle), 0 while it fails; NaN with no store, or before the first contact.",
            registry=registry,
        )
        self.store_up.set(float("nan"))
        self.break_glass_active = Gauge(
            "pdgw_break_glass_active", "Break-glass sessions in force now.", registry=registry
        )
        self.break_glass_invocations = Counter(
            "pdgw_break_glass_invocations", "Break-glass sessions started.", registry=registry
        )
        self.break_glass_accesses = LoopCounter(
            "pdgw_break_glass_accesses",
            "Requests allowed only by a break-glass session, by route.",
            ["route"],
            registry=registry,
        )
        self.token_cache = LoopCounter(
            "pdgw_token_cache",
            "Token verification cache lookups by result.",
            ["result"],
            registry=registry,
        )
        self.decision_cache = LoopCounter(
            "pdgw_decision_cache",
            "Policy decision cache lookups by result.",
            ["result"],
            registry=registry,
        )
        self.policy_info = Gauge(
            "pdgw_policy_info",
            "The policy in force (value 1), by version.",
            ["version"],
            registry=registry,
        )
        self.policy_rules = Gauge(
            "pdgw_policy_rules", "Rules in the policy in force.", registry=registry
        )
        self.policy_reloads = Counter(
            "pdgw_policy_reloads",
            "Policy reload attempts by result.",
            ["result"],
            registry=registry,
        )
        self.connections_open = Gauge(
            "pdgw_connections_open",
            "Client connections open now, by listener (proxy, console, admin).",
            ["listener"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "pdgw_connections_refused",
            "Connections refused when accepted, by listener and reason (peer_not_allowed, "
            "too_many_connections, too_many_connections_from_address).",
            ["listener", "reason"],
            registry=registry,
        )
        self.jwks_refreshes = Gauge(
            "pdgw_jwks_refreshes", "JWKS loads since start.", registry=registry
        )
        self.chain_seq = Gauge(
            "pdgw_audit_chain_seq",
            "Sequence number of the newest record in this instance's audit chain.",
            registry=registry,
        )
        self.checkpoint_seq = Gauge(
            "pdgw_audit_checkpoint_seq",
            "Sequence number covered by the newest signed checkpoint of the audit chain.",
            registry=registry,
        )
        self.checkpoint_time = Gauge(
            "pdgw_audit_checkpoint_timestamp_seconds",
            "When the newest checkpoint of the audit chain was signed.",
            registry=registry,
        )
        self.checkpoint_head = Gauge(
            "pdgw_audit_checkpoint_head_prefix",
            "The first 48 bits of the newest signed chain head, as a number: a copy of the head "
            "outside the audit store, to compare with `pd-gateway audit verify`.",
            registry=registry,
        )
        # Browser login and sessions (decision 014).
        self.auth_events = Counter(
            "pdgw_auth_events",
            "Browser session events: login, login_failed, logout, refresh, expired, revoked; by "
            "event and reason.",
            ["event", "reason"],
            registry=registry,
        )
        self.csrf_refusals = Counter(
            "pdgw_csrf_refusals",
            "Cookie-authenticated state-changing requests refused as cross-site, by reason.",
            ["reason"],
            registry=registry,
        )
        # Anomaly detection over the audit store (gateway.governance.anomalies; 9.1.6, 9.1.9, 10.2).
        # Labels: the kind and the configured job function whose thresholds judged the user —
        # bounded by the config; never the user (the `anomalies` table has that).
        self.anomalies = Counter(
            "pdgw_anomalies",
            "Anomalies this instance recorded in the audit store, by kind and job function.",
            ["kind", "job_function"],
            registry=registry,
        )
        self.anomaly_runs = Counter(
            "pdgw_anomaly_detection_runs",
            "Runs of the anomaly detectors, by result (ok, error).",
            ["result"],
            registry=registry,
        )
        self.anomaly_judged = Gauge(
            "pdgw_anomaly_window_end_timestamp_seconds",
            "End of the newest window the anomaly detectors judged (0 before the first).",
            registry=registry,
        )
        self.ready = Gauge(
            "pdgw_ready",
            "1 while /readyz answers ready (policy loaded, spool writable, keys loaded), else 0.",
            registry=registry,
        )
        # Pre-bound children for the hot path (~0.3 µs instead of ~1.2 µs per call).
        self._token_hit = self.token_cache.labels("hit")
        self._token_miss = self.token_cache.labels("miss")
        self._decision_hit = self.decision_cache.labels("hit")
        self._decision_miss = self.decision_cache.labels("miss")
        self._access = self.audit_events.labels("access")
        self._outcome = self.audit_events.labels("outcome")
        # Subject blocks (6.5, 6.6) — how old this replica's view of them is.
        self.blocks_view_age = Gauge(
            "pdgw_subject_blocks_view_age_seconds",
            "Seconds since this gateway last read every subject block from the audit store "
            "(blocks made through this gateway apply at once; others within the poll bound).",
            registry=registry,
        )
        self.blocked_subjects = Gauge(
            "pdgw_subject_blocks_active",
            "Data subjects currently blocked, as this gateway sees them.",
            registry=registry,
        )
        # The register of data subjects' requests (6.3, 6.5, 6.6, 7.3): computed where the store
        # is owned (gateway.governance.requests), never per subject or per request.
        self.requests_overdue = Gauge(
            "pdgw_subject_requests_overdue",
            "Open data subjects' requests past their legal deadline (30 calendar days for an "
            "answer, 7 working days for correction or destruction).",
            registry=registry,
        )
        self.requests_due_soon = Gauge(
            "pdgw_subject_requests_due_soon",
            "Open data subjects' requests whose deadline is today or within the configured "
            "warning days (subject_requests.due_soon_days), not yet overdue.",
            registry=registry,
        )
        self.requests_open = Gauge(
            "pdgw_subject_requests_open",
            "Open data subjects' requests in the register.",
            registry=registry,
        )
        self.requests_evaluated = Gauge(
            "pdgw_subject_requests_evaluated_timestamp_seconds",
            "When the register's deadlines were last evaluated (0 before the first).",
            registry=registry,
        )
        # serve --workers N (gateway.runtime.supervisor): the supervisor's.
        self.worker_restarts = Counter(
            "pdgw_worker_restarts",
            "Worker processes started again by the supervisor after they exited, by worker.",
            ["worker"],
            registry=registry,
        )

        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: MetricWrapperBase | LoopCounter | LoopHistogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, bound once and then taken from a dict (docs/benchmarks.md:
        the per-request counters and histograms by route, decision and status cost ~1.5 µs a call
        through ``labels``). Label values are the bounded vocabulary of this module's docstring,
        so the dict is bounded too. A loop metric's own ``labels`` is that dict already."""
        if type(metric) in _LOOP_TYPES:
            return metric.labels(*labels)
        key = (str(id(metric)), *labels)
        bound = self._children.get(key)
        if bound is None:
            bound = self._children[key] = metric.labels(*labels)
        return bound

    def token_cache_result(self, hit: bool) -> None:
        (self._token_hit if hit else self._token_miss).inc()

    def decision_cache_result(self, hit: bool) -> None:
        (self._decision_hit if hit else self._decision_miss).inc()

    def audit_record(self, kind: str) -> None:
        (self._access if kind == "access" else self._outcome).inc()

    def set_checkpoint(self, cp: Any) -> None:
        """After a checkpoint (gateway.audit.checkpoint.Checkpoint) was recorded."""
        self.checkpoint_seq.set(cp.seq)
        self.checkpoint_time.set(cp.ts_us / 1e6)
        self.checkpoint_head.set(int(cp.head[:12], 16))

    def set_policy(self, version: str, rules: int) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version).set(1)
        self.policy_rules.set(rules)
