"""The gateway's Prometheus metrics, in one registry per gateway instance.

Names carry the `kvgate_` prefix and their unit; counters end in `_total`. Label values are bounded:
models and replicas come from configuration or discovery, reasons and outcomes from fixed sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

disable_created_metrics()  # the `_created` series double the exposition and no dashboard reads them

LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.4, 0.8, 2.0)
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


@dataclass(frozen=True, slots=True)
class ReplicaSeries:
    """One model's per-request series on one replica."""

    ttft: Any
    itl: Any
    e2e: Any
    prompt_tokens: Any
    cached_tokens: Any
    predicted_cached_tokens: Any
    prediction_error_tokens: Any


class GatewayMetrics:
    def __init__(self) -> None:
        # labelled series looked up once: prometheus-client's labels() takes a lock and checks and
        # builds its key on every call, and a request would make a dozen such calls
        self._series: dict[tuple[str, str], ReplicaSeries] = {}
        self._labelled: dict[tuple[Any, ...], Any] = {}
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kvgate_requests",
            "Requests routed, per attempt: retries count again with reason=retry.",
            ["model", "replica", "policy", "reason"],
            registry=registry,
        )
        self.responses = Counter(
            "kvgate_responses",
            "Responses sent to clients, by HTTP status code.",
            ["model", "code"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "kvgate_upstream_errors",
            "Failed upstream attempts by kind (connect, timeout, status_5xx, midstream, ...).",
            ["replica", "kind"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "kvgate_prompt_tokens",
            "Prompt tokens reported by replicas.",
            ["model", "replica"],
            registry=registry,
        )
        self.cached_tokens = Counter(
            "kvgate_cached_tokens",
            "Prompt tokens replicas served from cache (usage.prompt_tokens_details.cached_tokens).",
            ["model", "replica"],
            registry=registry,
        )
        self.predicted_cached_tokens = Counter(
            "kvgate_predicted_cached_tokens",
            "Prompt tokens the index predicted the chosen replica to hold, for requests with reported usage.",
            ["model", "replica"],
            registry=registry,
        )
        self.prediction_error_tokens = Counter(
            "kvgate_cached_tokens_prediction_error_tokens",
            "Absolute difference between predicted and reported cached tokens, summed.",
            ["model", "replica"],
            registry=registry,
        )
        self.ttft = Histogram(
            "kvgate_time_to_first_token_seconds",
            "From the request's arrival at the gateway to its first streamed event (or full response).",
            ["model", "replica"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "kvgate_inter_token_latency_seconds",
            "Time between consecutive streamed events of a response.",
            ["model", "replica"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "kvgate_e2e_request_latency_seconds",
            "From the request's arrival at the gateway to the end of its response.",
            ["model", "replica"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decision = Histogram(
            "kvgate_routing_decision_seconds",
            "Time to route a request: prompt blocks, index lookup and policy.",
            ["policy"],
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.index_errors = Counter(
            "kvgate_index_errors",
            "Index operations that failed (the gateway routed on).",
            ["op"],
            registry=registry,
        )

    def series(self, model: str, replica: str) -> ReplicaSeries:
        series = self._series.get((model, replica))
        if series is None:
            series = self._series[(model, replica)] = ReplicaSeries(
                *(
                    metric.labels(model, replica)
                    for metric in (
                        self.ttft,
                        self.itl,
                        self.e2e,
                        self.prompt_tokens,
                        self.cached_tokens,
                        self.predicted_cached_tokens,
                        self.prediction_error_tokens,
                    )
                )
            )
        return series

    def request_routed(self, model: str, replica: str, policy: str, reason: str) -> None:
        self._child(self.requests, model, replica, policy, reason).inc()

    def response_sent(self, model: str, code: int) -> None:
        self._child(self.responses, model, str(code)).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(*labels)
        return child

    def register_replicas(self, replicas) -> None:
        """Export each replica's in-flight requests, queued prefill and health, read when scraped."""
        self.registry.register(_ReplicaCollector(replicas))

    def index_collector(self, block_counts, evictions) -> None:
        """Export the index's size and evictions, read when scraped: `block_counts()` and `evictions()`."""
        self.registry.register(_IndexCollector(block_counts, evictions))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReplicaCollector:
    def __init__(self, replicas) -> None:
        self._replicas = replicas

    def describe(self):
        return []

    def collect(self):
        inflight = GaugeMetricFamily(
            "kvgate_inflight_requests", "Requests the gateway has in flight per replica.", labels=["replica"]
        )
        queued = GaugeMetricFamily(
            "kvgate_queued_prefill_tokens",
            "Estimated uncached prompt tokens sent to a replica that have not started streaming.",
            labels=["replica"],
        )
        healthy = GaugeMetricFamily(
            "kvgate_replica_healthy", "1 when the replica takes new requests, else 0.", labels=["replica"]
        )
        for replica in self._replicas:
            inflight.add_metric([replica.name], replica.load.inflight)
            queued.add_metric([replica.name], replica.load.queued_prefill_tokens)
            healthy.add_metric([replica.name], 1.0 if replica.routable else 0.0)
        yield from (inflight, queued, healthy)


class _IndexCollector:
    def __init__(self, block_counts, evictions) -> None:
        self._block_counts = block_counts
        self._evictions = evictions

    def describe(self):
        return []

    def collect(self):
        blocks = GaugeMetricFamily(
            "kvgate_index_blocks",
            "Prompt blocks the index holds per replica and tier.",
            labels=["replica", "tier"],
        )
        for replica, counts in self._block_counts().items():
            for tier, count in counts.items():
                blocks.add_metric([replica, tier.name.lower()], count)
        yield blocks
        evicted = CounterMetricFamily(
            "kvgate_index_evictions",
            "Blocks that left a tier of the index's model of a replica: demoted a tier, or forgotten.",
            labels=["replica", "tier"],
        )
        for replica, counts in self._evictions().items():
            for tier, count in zip(("hbm", "dram", "storage"), counts, strict=False):
                evicted.add_metric([replica, tier], count)
        yield evicted
